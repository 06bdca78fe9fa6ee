//! What a reload changes among routes and sources, decided without I/O: which stop, which
//! start, what an operator should be warned of, and which changes a reload cannot make. The
//! binary composes these with the other sections into its reload plan.

use crate::config::{RouteConfig, StartFrom};
use crate::source::Source;

/// The names to stop (removed or changed) and to start (new or changed), of items named by
/// `name` (routes, sources).
pub fn changed_by_name<T: PartialEq>(
    current: &[T],
    next: &[T],
    name: impl Fn(&T) -> &str,
) -> (Vec<String>, Vec<String>) {
    let find = |items: &[T], wanted: &str| items.iter().position(|item| name(item) == wanted);
    let changed = |item: &T, others: &[T]| find(others, name(item)).is_none_or(|at| &others[at] != item);
    let stop = current.iter().filter(|item| changed(item, next)).map(|item| name(item).to_owned()).collect();
    let start = next.iter().filter(|item| changed(item, current)).map(|item| name(item).to_owned()).collect();
    (stop, start)
}

/// The routes to stop, by name (removed or changed), and those to start (new or changed).
pub fn route_diff(current: &[RouteConfig], next: &[RouteConfig]) -> (Vec<String>, Vec<RouteConfig>) {
    let (stop, start) = changed_by_name(current, next, |route| &route.name);
    (stop, next.iter().filter(|route| start.contains(&route.name)).cloned().collect())
}

/// A warning for each route of `start` that starts in a consumer group no route of `current`
/// uses: with no
/// committed offsets it reads from `start_from`, which for a renamed route means every event
/// again (into a table: every row again).
pub fn new_group_warnings(current: &[RouteConfig], stop: &[String], start: &[RouteConfig]) -> Vec<String> {
    let running_groups: Vec<String> = current.iter().map(RouteConfig::group_id).collect();
    let removed: Vec<&RouteConfig> = current
        .iter()
        .filter(|route| stop.contains(&route.name) && !start.iter().any(|new| new.name == route.name))
        .collect();
    let mut warnings = Vec::new();
    for route in start.iter().filter(|route| !running_groups.contains(&route.group_id())) {
        let group = route.group_id();
        let from = match route.start_from {
            StartFrom::Earliest => "the start of its topics (every event already there, again)",
            StartFrom::Latest => "the end of its topics (events published meanwhile are not read)",
        };
        let mut warning = format!(
            "route `{}` starts consumer group `{group}`, which no running route uses: unless that group has \
             committed offsets, it reads from {from} (`start_from`)",
            route.name
        );
        if let Some(old) = removed.first() {
            warning.push_str(&format!(
                "; if it replaces route `{}`, set `group_id = \"{}\"` on it to carry on where that one stood",
                old.name,
                old.group_id()
            ));
        }
        warnings.push(warning);
    }
    warnings
}

/// The capture settings (see [`Source::capture_settings`]) that differ between a running
/// source and its new settings: a reload cannot move them.
pub fn moved_capture_settings(running: &dyn Source, next: &dyn Source) -> Vec<&'static str> {
    let before = running.capture_settings();
    let after = next.capture_settings();
    let mut moved: Vec<&'static str> = after
        .iter()
        .filter(|(setting, value)| before.iter().find(|(old, _)| old == setting).map(|(_, old)| old) != Some(value))
        .map(|(setting, _)| *setting)
        .collect();
    moved.extend(before.iter().filter(|(setting, _)| !after.iter().any(|(new, _)| new == setting)).map(|(s, _)| *s));
    moved
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn routes(text: &str) -> Vec<RouteConfig> {
        crate::config::testing::routes(text).unwrap()
    }

    #[test]
    fn only_changed_new_and_removed_routes_are_touched() {
        let before = routes(
            "[[route]]\nname = \"a\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n\
             [[route]]\nname = \"b\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n\
             [[route]]\nname = \"c\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n",
        );
        let after = routes(
            "[[route]]\nname = \"a\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n\
             [[route]]\nname = \"b\"\ntopics = [\"t\"]\nfilter = { status = \"FAILED\" }\nsink = { type = \"stdout\" }\n\
             [[route]]\nname = \"d\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n",
        );
        let (stop, start) = route_diff(&before, &after);
        assert_eq!(stop, vec!["b", "c"]);
        assert_eq!(start.iter().map(|route| route.name.as_str()).collect::<Vec<_>>(), vec!["b", "d"]);
        let (stop, start) = route_diff(&after, &after);
        assert!(stop.is_empty() && start.is_empty());
    }

    #[test]
    fn a_renamed_route_is_warned_of_with_the_group_to_keep() {
        let before = routes("[[route]]\nname = \"b\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n");
        let after = routes("[[route]]\nname = \"c\"\ntopics = [\"t\"]\nsink = { type = \"stdout\" }\n");
        let (stop, start) = route_diff(&before, &after);
        let warnings = new_group_warnings(&before, &stop, &start);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("route `c` starts consumer group `herald.c`"), "{warnings:?}");
        assert!(warnings[0].contains("set `group_id = \"herald.b\"`"), "{warnings:?}");
        assert!(new_group_warnings(&before, &[], &before).is_empty(), "a running group is no news");
    }
}
