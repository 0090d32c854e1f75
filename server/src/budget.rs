//! The download budget: how many artifact transfers the server serves at once, in all and per
//! production line, whoever asks (deployments, hand-sent `update_firmware`, boards on the OTA
//! routes, users). A plant's uplink and a line's switch are shared by all of them, so one
//! count covers every route that sends an artifact body.
//!
//! A transfer holds a `Slot` from its first byte to its last (the slot rides inside the
//! response body and is given back when the body is dropped, complete or cut). A request that
//! finds no free slot is not queued on the server: it is answered at once with `Retry-After`
//! (503 `download_busy` on the artifact route, which agents wait out; 429 to boards), so a
//! burst costs the server no memory. HEAD and 304 answers send no body and take no slot.
//!
//! The active and peak counts are kept for `GET /api/v1/firmware/transfers`, and each new peak
//! is logged, so a test or an operator can read how close the budget came to its limits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// Seconds a refused download is told to wait: transfers of firmware take seconds to minutes,
/// so a short wait keeps slots busy without polling hard.
pub const RETRY_AFTER_SECS: u64 = 2;

/// The counts behind the budget.
#[derive(Debug, Default)]
struct Counts {
    active: usize,
    peak: usize,
    lines: BTreeMap<String, LineCounts>,
    served: u64,
    refused: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct LineCounts {
    pub active: usize,
    pub peak: usize,
}

/// The budget of one server.
#[derive(Debug)]
pub struct DownloadBudget {
    total: usize,
    per_line: usize,
    counts: Mutex<Counts>,
}

/// A transfer's place in the budget; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    budget: Arc<DownloadBudget>,
    line: Option<String>,
}

/// No slot is free; the request should come back after `retry_after_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub retry_after_secs: u64,
    /// What is full, for the refusal's text: the server's or the line's budget.
    pub reason: String,
}

/// What `GET /api/v1/firmware/transfers` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetView {
    pub slots: usize,
    pub slots_per_line: usize,
    pub active: usize,
    /// The most transfers at once since the server started.
    pub peak: usize,
    pub served: u64,
    pub refused: u64,
    pub lines: BTreeMap<String, LineCounts>,
}

impl DownloadBudget {
    pub fn new(total: usize, per_line: usize) -> Arc<DownloadBudget> {
        Arc::new(DownloadBudget {
            total: total.max(1),
            per_line: per_line.max(1),
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent under a panic elsewhere: every change is one statement.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a transfer to `line` (none: counted in the total only), or `Busy`.
    pub fn try_acquire(self: &Arc<Self>, line: Option<&str>) -> Result<Slot, Busy> {
        let mut counts = self.counts();
        let busy = |counts: &mut Counts, reason: String| {
            counts.refused += 1;
            Err(Busy {
                retry_after_secs: RETRY_AFTER_SECS,
                reason,
            })
        };
        if counts.active >= self.total {
            let reason = format!("all {} download slots of the server are in use", self.total);
            return busy(&mut counts, reason);
        }
        if let Some(line) = line {
            let used = counts.lines.get(line).map_or(0, |c| c.active);
            if used >= self.per_line {
                let reason = format!(
                    "all {} download slots of production line {line} are in use",
                    self.per_line
                );
                return busy(&mut counts, reason);
            }
            let entry = counts.lines.entry(line.to_owned()).or_default();
            entry.active += 1;
            entry.peak = entry.peak.max(entry.active);
        }
        counts.active += 1;
        counts.served += 1;
        if counts.active > counts.peak {
            counts.peak = counts.active;
            tracing::info!(
                peak = counts.peak,
                limit = self.total,
                "download slots: new peak of concurrent transfers"
            );
        }
        Ok(Slot {
            budget: Arc::clone(self),
            line: line.map(str::to_owned),
        })
    }

    pub fn view(&self) -> BudgetView {
        let counts = self.counts();
        BudgetView {
            slots: self.total,
            slots_per_line: self.per_line,
            active: counts.active,
            peak: counts.peak,
            served: counts.served,
            refused: counts.refused,
            lines: counts.lines.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.budget.counts();
        counts.active = counts.active.saturating_sub(1);
        if let Some(line) = &self.line {
            if let Some(entry) = counts.lines.get_mut(line) {
                entry.active = entry.active.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_and_each_line_are_capped_and_slots_come_back() {
        let budget = DownloadBudget::new(3, 2);
        let a1 = budget.try_acquire(Some("a")).unwrap();
        let a2 = budget.try_acquire(Some("a")).unwrap();
        let busy = budget.try_acquire(Some("a")).unwrap_err();
        assert!(busy.reason.contains("line a"), "{busy:?}");
        let b1 = budget.try_acquire(Some("b")).unwrap();
        let full = budget.try_acquire(None).unwrap_err();
        assert!(full.reason.contains("server"), "{full:?}");
        drop(a1);
        let again = budget.try_acquire(Some("a")).unwrap();
        let view = budget.view();
        assert_eq!((view.active, view.peak, view.refused), (3, 3, 2));
        assert_eq!(view.lines["a"].peak, 2);
        drop((a2, b1, again));
        assert_eq!(budget.view().active, 0);
        assert_eq!(budget.view().lines["a"].active, 0);
    }
}
