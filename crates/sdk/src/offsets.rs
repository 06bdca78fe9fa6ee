//! Where each partition resumes after a batch: one past the highest offset of each partition
//! it holds. The runtime stores these in Kafka once a batch is settled; a sink that stores
//! offsets with its data (Postgres) writes the same numbers in its own transaction.

/// One past the highest offset of each (topic, partition) among `coordinates`, ordered by topic
/// and partition. A batch spans few partitions: a linear search per record costs less than
/// hashing its topic, and no topic is copied.
pub fn next_offsets<'a>(coordinates: impl IntoIterator<Item = (&'a str, i32, i64)>) -> Vec<((&'a str, i32), i64)> {
    let mut next: Vec<((&str, i32), i64)> = Vec::new();
    for (topic, partition, offset) in coordinates {
        let key = (topic, partition);
        match next.iter_mut().find(|(known, _)| *known == key) {
            Some((_, next)) => *next = (*next).max(offset + 1),
            None => next.push((key, offset + 1)),
        }
    }
    next.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_past_the_highest_offset_of_each_partition_in_order() {
        let coordinates = [("t", 1, 5), ("a", 0, 3), ("t", 1, 9), ("t", 0, 2), ("t", 1, 7)];
        assert_eq!(next_offsets(coordinates), [(("a", 0), 4), (("t", 0), 3), (("t", 1), 10)]);
        assert!(next_offsets([]).is_empty());
    }
}
