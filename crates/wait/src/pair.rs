//! The awaited pairs: which source, and which stage of it (or any).

use thiserror::Error;

/// One source (and maybe stage) awaited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The data source, e.g. `OrdersDB`.
    pub source: String,
    /// The stage, e.g. `bronze_ingest`; `None`: any stage of the source.
    pub stage: Option<String>,
}

impl Pair {
    /// Whether `source` and `stage` (an event's) are this pair's.
    pub fn covers(&self, source: &str, stage: &str) -> bool {
        self.source == source && self.stage.as_deref().is_none_or(|wanted| wanted == stage)
    }
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.stage {
            Some(stage) => write!(f, "source `{}`, stage `{stage}`", self.source),
            None => write!(f, "source `{}`", self.source),
        }
    }
}

/// `--source` and `--stage` that make no pairs.
#[derive(Debug, Error)]
#[error(
    "--stage is given {stages} times for {sources} --source: give one stage for all sources, or one per source in the same order"
)]
pub struct PairsError {
    /// How many stages were given.
    pub stages: usize,
    /// How many sources.
    pub sources: usize,
}

/// The pairs `sources` and `stages` describe: no stage (any), one for all, or one each.
pub fn pairs(sources: &[String], stages: &[String]) -> Result<Vec<Pair>, PairsError> {
    let stage_of = |index: usize| match stages.len() {
        0 => Ok(None),
        1 => Ok(stages.first().cloned()),
        n if n == sources.len() => Ok(stages.get(index).cloned()),
        n => Err(PairsError { stages: n, sources: sources.len() }),
    };
    sources
        .iter()
        .enumerate()
        .map(|(index, source)| Ok(Pair { source: source.clone(), stage: stage_of(index)? }))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stages_pair_with_sources_one_for_all_or_one_each() {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let described = |sources: &[&str], stages: &[&str]| -> Result<Vec<String>, PairsError> {
            Ok(pairs(&strings(sources), &strings(stages))?.iter().map(ToString::to_string).collect())
        };
        assert_eq!(described(&["A"], &[]).unwrap(), ["source `A`"]);
        assert_eq!(
            described(&["A", "B"], &["silver"]).unwrap(),
            ["source `A`, stage `silver`", "source `B`, stage `silver`"]
        );
        assert_eq!(
            described(&["A", "B"], &["s1", "s2"]).unwrap(),
            ["source `A`, stage `s1`", "source `B`, stage `s2`"]
        );
        let error = described(&["A", "B", "C"], &["s1", "s2"]).unwrap_err().to_string();
        assert!(error.contains("--stage is given 2 times for 3 --source"), "{error}");
    }
}
