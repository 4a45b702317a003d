//! Which queue to read first. Weighted mode uses smooth weighted round-robin: with weights
//! 6:3:1, every 10 rounds start 6 times with `critical`, 3 with `default`, once with `low`,
//! interleaved, so `low` is never starved while the others are busy. Strict mode always starts
//! with the heaviest queue. Either way, the other queues follow by weight, so an empty queue
//! costs at most one non-blocking read (on one server, no round trip of its own once it was
//! seen empty: see `fetch`), not a lost round.

/// The reading order of one round.
#[derive(Debug, Clone)]
pub(crate) struct Priority {
    weights: Vec<i64>,
    current: Vec<i64>,
    strict: bool,
    /// Queue indexes by weight, heaviest first (ties keep configuration order).
    by_weight: Vec<usize>,
}

impl Priority {
    pub(crate) fn new(weights: &[u32], strict: bool) -> Self {
        let weights: Vec<i64> = weights.iter().map(|w| i64::from(*w)).collect();
        let mut by_weight: Vec<usize> = (0..weights.len()).collect();
        by_weight.sort_by_key(|i| std::cmp::Reverse(weights[*i]));
        Self {
            current: vec![0; weights.len()],
            weights,
            strict,
            by_weight,
        }
    }

    /// Queue indexes in the order to try them this round.
    pub(crate) fn next_order(&mut self) -> Vec<usize> {
        if self.strict || self.weights.len() < 2 {
            return self.by_weight.clone();
        }
        let total: i64 = self.weights.iter().sum();
        for (current, weight) in self.current.iter_mut().zip(&self.weights) {
            *current += weight;
        }
        let first = (0..self.weights.len())
            .max_by_key(|i| (self.current[*i], std::cmp::Reverse(*i)))
            .unwrap_or(0);
        self.current[first] -= total;
        let mut order = Vec::with_capacity(self.weights.len());
        order.push(first);
        order.extend(self.by_weight.iter().copied().filter(|i| *i != first));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::Priority;

    #[test]
    fn weighted_rounds_follow_the_weights_exactly() {
        let mut priority = Priority::new(&[6, 3, 1], false);
        let mut firsts = [0; 3];
        for _ in 0..1000 {
            let order = priority.next_order();
            assert_eq!(order.len(), 3);
            firsts[order[0]] += 1;
        }
        assert_eq!(firsts, [600, 300, 100]);
    }

    #[test]
    fn low_is_served_within_every_ten_rounds() {
        let mut priority = Priority::new(&[6, 3, 1], false);
        let firsts: Vec<usize> = (0..10).map(|_| priority.next_order()[0]).collect();
        assert!(firsts.contains(&2), "{firsts:?}");
    }

    #[test]
    fn strict_always_starts_with_the_heaviest() {
        let mut priority = Priority::new(&[1, 6, 3], true);
        for _ in 0..10 {
            assert_eq!(priority.next_order(), [1, 2, 0]);
        }
    }
}
