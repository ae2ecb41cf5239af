//! Wakes a sink's task when its HTTP exchange moves on.
//!
//! The component drives HTTP without blocking and, while a request is out,
//! asks to be polled again within 5 ms: without more, every request body
//! chunk and every answer would wait up to that long to be seen. The host
//! knows better: it runs the exchange. These wrappers ring the sink's
//! [`Wake`] when the server has taken a chunk of the request body and the
//! guest has more to write, when the answer's head arrives and when a
//! chunk of its body (or its end) does, and the sink task polls at once.
//! Nothing rings when there is nothing for the guest to do: each poll is a
//! call into the component, and at small batches they add up.
//!
//! The answer's head is subtle: wasi:http hands it to the guest only once
//! the task that sent the request has ended, which is after any code of
//! ours in it has run. So [`Wake::until_seen`] keeps ringing, a scheduler
//! turn apart, until the guest has touched the answer's body.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// One sink's doorbell; cheap to clone.
#[derive(Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn ring(&self) {
        // A permit is kept if the task is not waiting yet: never missed.
        self.0.notify_one();
    }

    /// Resolves at the next ring (or at once for one already rung).
    pub async fn rung(&self) {
        self.0.notified().await
    }
}

/// Rings [`Wake::until_seen`] gives up after: the guest's own timer takes
/// over.
const MAX_UNSEEN_RINGS: usize = 2;

impl Wake {
    /// Ring, then again after each scheduler turn, until `seen` is set (or
    /// [`MAX_UNSEEN_RINGS`] rings). Run on a task spawned as the answer is
    /// handed over, so some ring comes after the guest can see it.
    pub async fn until_seen(&self, seen: Arc<AtomicBool>) {
        for _ in 0..MAX_UNSEEN_RINGS {
            // The guest can take the answer only once the task that sent
            // the request has ended: a turn first, so the ring is not early.
            tokio::task::yield_now().await;
            if seen.load(Ordering::Acquire) {
                return;
            }
            self.ring();
        }
    }
}

/// A body that rings `wake` each time a frame of it is taken (a request
/// body: only while the guest has more of it to write), and marks `seen`
/// once polled or dropped (an answer's body).
pub struct Ringing<B> {
    inner: B,
    wake: Wake,
    seen: Option<Arc<AtomicBool>>,
    /// A request body's bytes not yet taken, from its `content-length`.
    unsent: Option<u64>,
}

impl<B> Ringing<B> {
    /// A request body of `length` bytes (its `content-length`, if known):
    /// once all of it has been taken, the guest has nothing left to write,
    /// so the last frame rings no one.
    pub fn request(inner: B, wake: Wake, length: Option<u64>) -> Self {
        Ringing {
            inner,
            wake,
            seen: None,
            unsent: length,
        }
    }

    /// An answer's body: `seen` tells [`Wake::until_seen`] the guest has it.
    pub fn answer(inner: B, wake: Wake, seen: Arc<AtomicBool>) -> Self {
        Ringing {
            inner,
            wake,
            seen: Some(seen),
            unsent: None,
        }
    }

    fn mark_seen(&self) {
        if let Some(seen) = &self.seen {
            seen.store(true, Ordering::Release);
        }
    }
}

impl<B> Drop for Ringing<B> {
    fn drop(&mut self) {
        self.mark_seen();
    }
}

impl<B: Body + Unpin> Body for Ringing<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.mark_seen();
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ring = match &polled {
            Poll::Pending => false,
            // An answer's end is what the guest waits for; a request
            // body's comes after the guest finished it.
            Poll::Ready(None) => self.seen.is_some(),
            Poll::Ready(Some(Ok(frame))) => {
                let taken = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                match &mut self.unsent {
                    Some(unsent) => {
                        *unsent = unsent.saturating_sub(taken);
                        *unsent > 0
                    }
                    None => true,
                }
            }
            Poll::Ready(Some(Err(_))) => true,
        };
        if ring {
            self.wake.ring();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn taking_a_frame_rings() {
        let wake = Wake::default();
        let mut body = Ringing::request(
            Full::new(bytes::Bytes::from_static(b"m v=1\n")),
            wake.clone(),
            None,
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), &b"m v=1\n"[..]);
        // The ring was kept for a task not yet waiting.
        tokio::time::timeout(std::time::Duration::from_secs(5), wake.rung())
            .await
            .expect("rung");
    }

    #[tokio::test]
    async fn the_last_bytes_of_a_request_ring_no_one() {
        // The guest wrote all 12 bytes: nothing for it to do once taken.
        let wake = Wake::default();
        let data = bytes::Bytes::from_static(b"m v=1\nm v=2\n");
        let mut body = Ringing::request(Full::new(data.clone()), wake.clone(), Some(12));
        body.frame().await.unwrap().unwrap();
        assert!(body.frame().await.is_none());
        assert!(!has_rung(&wake).await, "finished request body rang");
        // 12 of 20 bytes taken: the guest may write the rest now.
        let mut body = Ringing::request(Full::new(data), wake.clone(), Some(20));
        body.frame().await.unwrap().unwrap();
        assert!(has_rung(&wake).await, "room for the rest must ring");
    }

    /// Whether a ring is waiting: polls `rung` once, never sleeps.
    async fn has_rung(wake: &Wake) -> bool {
        tokio::time::timeout(std::time::Duration::ZERO, wake.rung())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn an_answer_rings_until_its_body_is_touched() {
        let wake = Wake::default();
        let seen = Arc::new(AtomicBool::new(false));
        let body = Ringing::answer(
            Full::new(bytes::Bytes::from_static(b"")),
            wake.clone(),
            seen.clone(),
        );
        wake.until_seen(seen.clone()).await;
        assert!(has_rung(&wake).await, "not seen yet: must ring");
        assert!(!has_rung(&wake).await, "one permit only");
        drop(body);
        assert!(
            seen.load(Ordering::Acquire),
            "dropping the body counts as seen"
        );
        wake.until_seen(seen).await;
        assert!(!has_rung(&wake).await, "seen: no more rings");
    }
}
