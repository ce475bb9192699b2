//! A handler's view of history: a model folded over the whole stream, kept just behind the entry being
//! handled.
//!
//! A consumer group hands each replica only some entries, but every decision needs everything that
//! happened before it. So each handler folds the full stream (XRANGE, not the group) up to and
//! including the entry it is about to handle, then decides. Given the same stream prefix the
//! model is the same on every replica, which is what makes decisions deterministic and replayable.
//! A redelivered older entry finds the model already past it: it is then decided on the newer state,
//! which is the level-triggered reading of an old trigger.

use bus::stream_id::StreamId;
use bus::{Audit, Envelope};

/// What a projection folds into.
pub trait Fold: Send + 'static {
    fn apply(&mut self, envelope: &Envelope);
}

/// A model and how far into the stream it has read.
pub struct Projection<M> {
    model: M,
    /// The last entry folded in.
    cursor: Option<StreamId>,
    audit: Audit,
}

impl<M: Fold> Projection<M> {
    pub fn new(model: M, audit: Audit) -> Self {
        Self {
            model,
            cursor: None,
            audit,
        }
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    /// Folds every entry after the cursor up to and including `id` (whose decoded form is `envelope`).
    pub async fn catch_up_through(
        &mut self,
        id: &str,
        envelope: &Envelope,
    ) -> Result<(), bus::BusError> {
        let Some(target) = StreamId::parse(id) else {
            return Ok(());
        };
        if self.cursor.is_some_and(|c| c >= target) {
            return Ok(());
        }
        self.fold_until(format!("({id}")).await?;
        self.model.apply(envelope);
        self.cursor = Some(target);
        Ok(())
    }

    /// Folds everything up to the end of the stream (for `status`, ticks and the leader's timers).
    pub async fn catch_up_all(&mut self) -> Result<(), bus::BusError> {
        self.fold_until("+".to_string()).await
    }

    /// Folds the entries after the cursor up to `end` (an XRANGE bound). Undecodable entries are
    /// skipped: the consumer runtime dead-letters them.
    async fn fold_until(&mut self, end: String) -> Result<(), bus::BusError> {
        let start = match self.cursor {
            Some(c) => format!("({}-{}", c.ms, c.seq),
            None => "-".to_string(),
        };
        // A page at a time: the start-up fold of a long stream holds one page, not the stream.
        let mut pages = self.audit.pages(&start, &end);
        while let Some(page) = pages.next_page().await? {
            for entry in page {
                if let Ok(e) = entry.decode() {
                    self.model.apply(&e);
                }
                self.cursor = StreamId::parse(&entry.id).or(self.cursor);
            }
        }
        Ok(())
    }
}
