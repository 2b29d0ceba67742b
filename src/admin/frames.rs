//! Every backend's history, kept by time rather than by backend: one frame per sample, a
//! row per backend in it, at most [`SAMPLES`] frames. A sample of the whole fleet writes
//! one frame front to back, so sampling 20,000 backends touches a few hundred kilobytes in
//! order instead of 20,000 rings scattered over 150 MB (which cost the control thread a
//! cache and TLB miss per backend: some 200 ms every 2 s at 20,000 backends on a loaded
//! virtual machine). Reading one backend's history gathers its row from each frame; that
//! happens only when asked (`/api/history?backend=ID`).
//!
//! A backend has a slot (its row's index) from its first sample until a sample no longer
//! sees it; a freed slot goes to the next new backend, whose history starts at its own
//! first frame (`born`), so it never shows the previous owner's.

use crate::admin::sample::{SAMPLES, Sample, quantile};
use std::collections::{HashMap, VecDeque};

/// A backend's series in a row.
pub const SERIES: usize = 8;
/// Its counters taken as rates.
pub const COUNTERS: usize = 4;
/// Buckets of the histogram its percentiles come from (`CONNECT_BUCKETS` and `+Inf`).
pub const BUCKETS: usize = crate::stats::CONNECT_BUCKETS.len() + 1;

pub type Row = [Sample; SERIES];
const EMPTY: Row = [Sample::MISSING; SERIES];

/// One sample of every backend.
#[derive(Debug)]
struct Frame {
    tick: u64,
    rows: Vec<Row>,
}

/// What a slot remembers between samples.
#[derive(Debug, Clone)]
struct Slot {
    /// The backend's id; `None`: free.
    id: Option<u64>,
    /// The tick of its first sample.
    born: u64,
    /// The tick of the last sample that saw it.
    seen: u64,
    /// Counters and histogram at its last sample (`None` before its first).
    last: Option<([u64; COUNTERS], [u64; BUCKETS])>,
    /// The newest percentiles (p50, p99) that were not missing, and their tick.
    percentiles: [(f64, u64); 2],
}

/// What one sample of one backend gives: its gauges and the state, besides its counters
/// and histogram.
pub struct Reading {
    pub active: f64,
    pub state: f64,
    pub counts: [u64; COUNTERS],
    pub histogram: [u64; BUCKETS],
    pub bounds: &'static [f64],
}

/// Every backend's history.
#[derive(Debug, Default)]
pub struct BackendFrames {
    slot_of: HashMap<u64, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Oldest first; at most [`SAMPLES`].
    frames: VecDeque<Frame>,
}

impl BackendFrames {
    /// Starts the frame of sample `tick` (reusing the oldest one's allocation once there
    /// are [`SAMPLES`]).
    pub fn begin(&mut self, tick: u64) {
        let mut frame = if self.frames.len() >= SAMPLES {
            self.frames.pop_front().unwrap_or(Frame {
                tick,
                rows: Vec::new(),
            })
        } else {
            Frame {
                tick,
                rows: Vec::with_capacity(self.slots.len()),
            }
        };
        frame.tick = tick;
        frame.rows.clear();
        self.frames.push_back(frame);
    }

    /// Records backend `id`'s reading in the current frame ([`BackendFrames::begin`]);
    /// `secs` since the last sample.
    pub fn record(&mut self, id: u64, reading: &Reading, secs: f64) {
        let Some(frame) = self.frames.back_mut() else {
            return;
        };
        let tick = frame.tick;
        let slot = match self.slot_of.get(&id) {
            Some(&slot) => slot,
            None => {
                let fresh = Slot {
                    id: Some(id),
                    born: tick,
                    seen: tick,
                    last: None,
                    percentiles: [(f64::NAN, 0); 2],
                };
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot] = fresh;
                        slot
                    }
                    None => {
                        self.slots.push(fresh);
                        self.slots.len() - 1
                    }
                };
                self.slot_of.insert(id, slot);
                slot
            }
        };
        let state = &mut self.slots[slot];
        state.seen = tick;
        let mut rates = [f64::NAN; COUNTERS];
        let mut quantiles = [f64::NAN; 2];
        if let Some((counts, histogram)) = &state.last {
            for (rate, (now, then)) in rates.iter_mut().zip(reading.counts.iter().zip(counts)) {
                *rate = now.saturating_sub(*then) as f64 / secs;
            }
            let mut delta = [0u64; BUCKETS];
            for (d, (now, then)) in delta
                .iter_mut()
                .zip(reading.histogram.iter().zip(histogram))
            {
                *d = now.saturating_sub(*then);
            }
            quantiles = [
                quantile(reading.bounds, &delta, 0.5) * 1e3,
                quantile(reading.bounds, &delta, 0.99) * 1e3,
            ];
        }
        state.last = Some((reading.counts, reading.histogram));
        for (kept, q) in state.percentiles.iter_mut().zip(quantiles) {
            if !q.is_nan() {
                *kept = (q, tick);
            }
        }
        if frame.rows.len() <= slot {
            frame.rows.resize(slot + 1, EMPTY);
        }
        frame.rows[slot] = [
            Sample::new(reading.active),
            Sample::new(rates[0]),
            Sample::new(rates[1]),
            Sample::new(rates[2]),
            Sample::new(rates[3]),
            Sample::new(quantiles[0]),
            Sample::new(quantiles[1]),
            Sample::new(reading.state),
        ];
    }

    /// Ends the current frame: backends it did not see are forgotten, their slots freed.
    pub fn end(&mut self) {
        let Some(tick) = self.frames.back().map(|f| f.tick) else {
            return;
        };
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(id) = slot.id {
                if slot.seen != tick {
                    slot.id = None;
                    slot.last = None;
                    self.slot_of.remove(&id);
                    self.free.push(i);
                }
            }
        }
    }

    fn slot(&self, id: u64) -> Option<(usize, &Slot)> {
        let &slot = self.slot_of.get(&id)?;
        Some((slot, &self.slots[slot]))
    }

    /// Backend `id`'s newest row.
    pub fn latest(&self, id: u64) -> Option<Row> {
        let (slot, state) = self.slot(id)?;
        let frame = self.frames.back()?;
        (frame.tick >= state.born)
            .then(|| frame.rows.get(slot).copied())
            .flatten()
    }

    /// Backend `id`'s newest percentiles (p50, p99, in ms) that are at most `within`
    /// samples old (NaN where there is none).
    pub fn recent_percentiles(&self, id: u64, within: u64) -> [f64; 2] {
        let (Some((_, state)), Some(frame)) = (self.slot(id), self.frames.back()) else {
            return [f64::NAN; 2];
        };
        state.percentiles.map(|(value, at)| {
            if frame.tick.saturating_sub(at) < within {
                value
            } else {
                f64::NAN
            }
        })
    }

    /// Backend `id`'s rows, oldest first (from its first sample).
    pub fn rows(&self, id: u64) -> Option<impl Iterator<Item = Row> + '_> {
        let (slot, state) = self.slot(id)?;
        let born = state.born;
        Some(
            self.frames
                .iter()
                .filter(move |f| f.tick >= born)
                .map(move |f| f.rows.get(slot).copied().unwrap_or(EMPTY)),
        )
    }

    /// Backends it holds a history of.
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Bytes it holds, allocations included (the map's table roughly).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .frames
                .iter()
                .map(|f| {
                    std::mem::size_of::<Frame>() + f.rows.capacity() * std::mem::size_of::<Row>()
                })
                .sum::<usize>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.free.capacity() * std::mem::size_of::<usize>()
            + self.slot_of.capacity() * (2 * std::mem::size_of::<u64>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(active: f64, sessions: u64) -> Reading {
        Reading {
            active,
            state: 0.0,
            counts: [sessions, 0, 0, 0],
            histogram: [0; BUCKETS],
            bounds: &crate::stats::CONNECT_BUCKETS,
        }
    }

    fn sample(frames: &mut BackendFrames, tick: u64, backends: &[(u64, f64, u64)]) {
        frames.begin(tick);
        for &(id, active, sessions) in backends {
            frames.record(id, &reading(active, sessions), 2.0);
        }
        frames.end();
    }

    #[test]
    fn a_backend_keeps_its_rows_in_order_with_rates() {
        let mut f = BackendFrames::default();
        for tick in 1..=5u64 {
            sample(&mut f, tick, &[(7, tick as f64, tick * 10), (9, 0.0, 0)]);
        }
        let rows: Vec<Row> = f.rows(7).expect("rows").collect();
        assert_eq!(rows.len(), 5);
        let active: Vec<f64> = rows.iter().map(|r| r[0].get()).collect();
        assert_eq!(active, [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(rows[0][1].get().is_nan(), "no rate at the first sample");
        assert_eq!(rows[4][1].get(), 5.0, "10 sessions in 2 s");
        assert_eq!(f.latest(7).map(|r| r[0].get()), Some(5.0));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn frames_wrap_around_and_memory_stays_bounded() {
        let mut f = BackendFrames::default();
        let fleet: Vec<(u64, f64, u64)> = (0..100).map(|id| (id, 1.0, 0)).collect();
        let mut full = 0;
        for tick in 1..=(SAMPLES as u64 * 3) {
            sample(&mut f, tick, &fleet);
            assert!(f.frames.len() <= SAMPLES);
            if tick == SAMPLES as u64 {
                full = f.bytes();
            }
        }
        assert_eq!(f.bytes(), full, "no growth once the frames wrapped");
        let rows: Vec<Row> = f.rows(42).expect("rows").collect();
        assert_eq!(rows.len(), SAMPLES);
        // About 16 bytes a sample per backend, whatever the time.
        assert!(full < 100 * SAMPLES * 16 + 64 * 1024, "{full}");
    }

    #[test]
    fn a_thousand_backends_take_about_seven_mib_at_most() {
        let mut f = BackendFrames::default();
        let fleet: Vec<(u64, f64, u64)> = (0..1000).map(|id| (id, 1.0, id)).collect();
        for tick in 1..=(SAMPLES as u64 + 10) {
            sample(&mut f, tick, &fleet);
        }
        let bytes = f.bytes();
        // 450 samples of 8 two-byte values, plus what each slot remembers.
        assert!(bytes > 1000 * SAMPLES * 16, "{bytes}");
        assert!(bytes < 7_700_000, "{bytes} bytes for 1,000 backends");
    }

    #[test]
    fn a_gone_backend_is_forgotten_and_its_slot_reused_without_its_past() {
        let mut f = BackendFrames::default();
        for tick in 1..=3 {
            sample(&mut f, tick, &[(1, 5.0, 0), (2, 6.0, 0)]);
        }
        // Backend 1 goes; backend 3 comes and takes its slot.
        sample(&mut f, 4, &[(2, 6.0, 0)]);
        assert!(f.rows(1).is_none());
        sample(&mut f, 5, &[(2, 6.0, 0), (3, 8.0, 0)]);
        let rows: Vec<f64> = f.rows(3).expect("rows").map(|r| r[0].get()).collect();
        assert_eq!(rows, [8.0], "only its own sample, not backend 1's");
        assert_eq!(f.rows(2).expect("rows").count(), 5);
    }

    #[test]
    fn percentiles_stay_current_for_a_while() {
        let mut f = BackendFrames::default();
        let mut r = reading(0.0, 0);
        f.begin(1);
        f.record(1, &r, 2.0);
        f.end();
        r.histogram[3] = 10; // ten in (1 ms, 2.5 ms]
        f.begin(2);
        f.record(1, &r, 2.0);
        f.end();
        let [p50, _] = f.recent_percentiles(1, 30);
        assert!((p50 - 1.75).abs() < 1e-9, "{p50}");
        for tick in 3..40 {
            f.begin(tick);
            f.record(1, &r, 2.0);
            f.end();
        }
        assert!(f.recent_percentiles(1, 30)[0].is_nan(), "too old");
    }
}
