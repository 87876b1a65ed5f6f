//! The last minutes of each cell's streams per second, kept by the node so that a
//! dashboard opened now draws its sparklines from the start, not from when it opened.
//!
//! The dashboard's ticker samples every cell's accepted count once per
//! [`FEED_INTERVAL`](super::dashboard::FEED_INTERVAL), feed or no feed: a read lock
//! and one atomic load per cell. Each cell keeps at most [`HISTORY_POINTS`] rates;
//! cells are those the metrics know (every cell served since the start).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// Rates kept per cell: two minutes at one a second, as many as the page draws.
pub const HISTORY_POINTS: usize = 120;

/// Each cell's recent streams per second, oldest first.
#[derive(Debug, Default)]
pub struct History {
    /// Each cell's accepted count at the last sample.
    last: HashMap<String, u64>,
    /// Each cell's rates, at most [`HISTORY_POINTS`].
    rates: HashMap<String, VecDeque<f64>>,
}

impl History {
    /// Notes each cell's `accepted` count, `elapsed` after the last sample; the first
    /// sample of a cell only sets its base.
    pub fn sample(&mut self, accepted: Vec<(String, u64)>, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (cell, count) in accepted {
            let before = self.last.insert(cell.clone(), count);
            let (Some(before), true) = (before, seconds > 0.0) else {
                continue;
            };
            let rates = self.rates.entry(cell).or_default();
            if rates.len() == HISTORY_POINTS {
                rates.pop_front();
            }
            rates.push_back(count.saturating_sub(before) as f64 / seconds);
        }
    }

    /// Each cell's rates, oldest first, rounded to 0.1 stream/s.
    pub fn rates(&self) -> BTreeMap<String, Vec<f64>> {
        self.rates
            .iter()
            .map(|(cell, rates)| {
                let rounded = rates.iter().map(|r| (r * 10.0).round() / 10.0).collect();
                (cell.clone(), rounded)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_count_differences_and_the_oldest_go() {
        let mut history = History::default();
        let second = Duration::from_secs(1);
        history.sample(vec![("echo".into(), 10)], second);
        assert!(history.rates().is_empty(), "a first sample is only a base");
        history.sample(vec![("echo".into(), 14)], second);
        history.sample(vec![("echo".into(), 24)], 2 * second);
        assert_eq!(history.rates()["echo"], [4.0, 5.0]);
        for n in 0..2 * HISTORY_POINTS as u64 {
            history.sample(vec![("echo".into(), 24 + n)], second);
        }
        let echo = &history.rates()["echo"];
        assert_eq!(echo.len(), HISTORY_POINTS);
        assert_eq!(echo[0], 1.0);
    }
}
