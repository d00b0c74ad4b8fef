//! Steady traffic during a failover, and the outage windows it saw.

use std::time::{Duration, Instant};

/// One request every 20 ms until `stop`, request `i` made by `get(i)` (which picks the
/// instance and answers status and body), timestamped from the start.
pub async fn traffic<F, Fut>(get: F, stop: &tokio::sync::watch::Receiver<bool>) -> Vec<(Duration, u16, String)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = (u16, String)>,
{
    let start = Instant::now();
    let mut results = Vec::new();
    let mut i = 0;
    while !*stop.borrow() {
        let (status, body) = get(i).await;
        results.push((start.elapsed(), status, body));
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    results
}

/// The windows of non-200 answers: (first failure, first 200 after it) pairs; a window still
/// open at the end closes at `Duration::MAX`.
pub fn outage_windows(results: &[(Duration, u16, String)]) -> Vec<(Duration, Duration)> {
    let mut windows = Vec::new();
    let mut open: Option<Duration> = None;
    for (t, status, _) in results {
        match (*status == 200, open) {
            (false, None) => open = Some(*t),
            (true, Some(from)) => {
                windows.push((from, *t));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(from) = open {
        windows.push((from, Duration::MAX));
    }
    windows
}
