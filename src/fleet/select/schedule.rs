//! One cycle of smooth weighted turns over a group, computed once per fleet generation:
//! what `round-robin` walks with a shared cursor and what `random-two` draws from (a
//! uniform position in it is a draw in proportion to weight).
//!
//! Weights are first divided by their greatest common divisor, so the cycle has
//! `Σ weight / gcd` turns (one per backend when weights are equal). A backend of weight `w`
//! has its `k`-th turn (from 0) at virtual time `(k + ½) / w`, and the turns are taken in
//! that order (ties to the lower index): each backend's turns are spread evenly over the
//! cycle, as with nginx's smooth weighted round robin, rather than bunched (weights 5, 1, 1
//! give `a a a b c a a`, not `a a a a a b c`).

/// Turns in one cycle, as member indexes.
#[derive(Debug)]
pub struct Schedule {
    turns: Box<[u32]>,
}

impl Schedule {
    /// The cycle for members with these weights (a weight of 0 counts as 1).
    pub fn new(weights: &[u32]) -> Schedule {
        let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
        let divisor = weights.iter().copied().reduce(gcd).unwrap_or(1).max(1);
        let mut turns: Vec<(u32, u32)> = weights
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (0..(w / divisor) as u32).map(move |k| (i as u32, k)))
            .collect();
        // (k + ½) / w ordered by cross-multiplying: (2k + 1) × w' against (2k' + 1) × w.
        let reduced = |i: u32| weights[i as usize] / divisor;
        turns.sort_unstable_by(|&(i, k), &(j, l)| {
            ((2 * u64::from(k) + 1) * reduced(j))
                .cmp(&((2 * u64::from(l) + 1) * reduced(i)))
                .then(i.cmp(&j))
        });
        Schedule {
            turns: turns.into_iter().map(|(i, _)| i).collect(),
        }
    }

    /// Turns in one cycle (0 for an empty group).
    pub fn len(&self) -> usize {
        self.turns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// The member whose turn is at `position` (taken modulo the cycle). The cycle must not
    /// be empty.
    pub fn at(&self, position: u64) -> usize {
        self.turns[(position % self.turns.len() as u64) as usize] as usize
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(weights: &[u32]) -> Vec<usize> {
        let s = Schedule::new(weights);
        (0..s.len() as u64).map(|p| s.at(p)).collect()
    }

    #[test]
    fn equal_weights_take_turns_in_order() {
        assert_eq!(cycle(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(cycle(&[4, 4]), [0, 1], "reduced by the common divisor");
        assert_eq!(cycle(&[]), Vec::<usize>::new());
    }

    #[test]
    fn heavy_backends_turns_are_spread_not_bunched() {
        assert_eq!(cycle(&[5, 1, 1]), [0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(cycle(&[2, 1]), [0, 1, 0]);
        assert_eq!(cycle(&[6, 3, 2]), [0, 1, 0, 2, 0, 1, 0, 0, 2, 1, 0]);
    }

    #[test]
    fn every_backend_has_its_weight_in_turns_evenly_spaced() {
        let weights: Vec<u32> = (0..200u32).map(|i| 1 + (i * 7919) % 256).collect();
        let s = Schedule::new(&weights);
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        assert_eq!(s.len() as u64, total);
        let mut positions = vec![Vec::new(); weights.len()];
        for p in 0..s.len() {
            positions[s.at(p as u64)].push(p as f64);
        }
        for (i, seen) in positions.iter().enumerate() {
            let w = f64::from(weights[i]);
            assert_eq!(seen.len(), weights[i] as usize);
            // The k-th turn sits within a turn or two of where (k + ½) / w puts it, scaled
            // to the cycle (ties among backends shift it by at most the number of ties).
            for (k, &p) in seen.iter().enumerate() {
                let ideal = (k as f64 + 0.5) / w * total as f64;
                assert!(
                    (p - ideal).abs() <= weights.len() as f64,
                    "backend {i} turn {k} at {p}, ideally {ideal}"
                );
            }
        }
    }
}
