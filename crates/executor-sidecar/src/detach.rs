//! Calls that outlive their caller. A tool call runs on a task of its own, not inside
//! the request's future: if the agent cancels, resets the stream or disconnects while
//! a WRITE tool runs, tonic drops the request's future, but the call goes on to its
//! end and is audited like any other, its invocation row saying the caller went away.
//! (Dropping it with the request would leave the tool's effect with no record.)
//!
//! Running the call inside the request's future instead, and moving it to a task only
//! when that future is dropped, was measured slower, not faster: `make bench-invoke`'s
//! c=64 miss cost the sidecar 131–135 µs of CPU against 94–112 with a task per call.
//! Every wake-up of a call in the request's future polls it through hyper's H2 stream
//! (which checks the stream for a reset under the connection's lock) and every tower
//! layer; on a task of its own, only the call's state machine is polled.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use crate::error::ExecError;

/// Set once the caller of a call is gone (its request future was dropped).
#[derive(Debug, Clone, Default)]
pub struct CallerGone(Arc<AtomicBool>);

impl CallerGone {
    pub fn is_gone(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Marks the caller gone when dropped, unless the answer was collected first.
struct Watch {
    gone: CallerGone,
    answered: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.answered {
            self.gone.0.store(true, Ordering::Release);
        }
    }
}

/// Runs `work` and waits for it: first inline, then, once it has to wait (for the
/// tool, a limiter, the cache), on its own task. If the waiting future is dropped
/// first, `work` carries on to its end and sees its [`CallerGone`] set.
///
/// Work that finishes on its first poll (most cache hits, refusals) never needs a
/// task: it is answered at once and in order, as without this wrapper. A future
/// polled once can move to a task because it is boxed (pinned on the heap); what it
/// waits on registers the task's waker at the task's first poll.
pub async fn detached<T, E, F>(work: impl FnOnce(CallerGone) -> F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<ExecError> + Send + 'static,
{
    let gone = CallerGone::default();
    let mut watch = Watch {
        gone: gone.clone(),
        answered: false,
    };
    let mut work = Box::pin(work(gone));
    if let Poll::Ready(out) = futures::poll!(work.as_mut()) {
        watch.answered = true;
        return out;
    }
    let outcome = tokio::spawn(work).await;
    watch.answered = true;
    outcome.map_err(|e| E::from(ExecError::Internal(format!("the call did not complete: {e}"))))?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn a_dropped_caller_leaves_the_work_running_and_flagged() {
        let (started_tx, started_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        let caller = tokio::spawn(detached(move |gone| async move {
            let _ = started_tx.send(());
            let _ = go_rx.await;
            let _ = done_tx.send(gone.is_gone());
            Ok::<_, ExecError>(())
        }));
        started_rx.await.unwrap();
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        go_tx.send(()).unwrap();
        let flagged = tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .unwrap()
            .unwrap();
        assert!(flagged, "the work ran to its end and knew its caller was gone");
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_internal_error_of_that_call() {
        let out = detached(|_| async {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("tool adapter bug");
            }
            Ok::<_, ExecError>(())
        })
        .await;
        assert!(matches!(out, Err(ExecError::Internal(m)) if m.contains("did not complete")));
    }

    #[tokio::test]
    async fn a_caller_that_waits_is_not_gone() {
        let seen = detached(|gone| async move { Ok::<_, ExecError>(gone.is_gone()) })
            .await
            .unwrap();
        assert!(!seen);
    }
}
