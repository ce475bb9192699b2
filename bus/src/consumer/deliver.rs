//! One delivery from entry to [`Finish`]: checks before the handler (deleted, a retry for another
//! group, undecodable, delivered too often), the handler run with panics caught, and what its result
//! means for the entry.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tracing::{debug, info_span, warn, Instrument};

use super::settle::{dead_letter, publish_and_ack};
use super::{
    default_retry_backoff, Ctx, Delivery, DeliveryOutcome, ErrorPolicy, Finish, GroupHandler,
    HandlerError, Work, RETRY_FOR,
};
use crate::entry::{RawEntry, ReadEntry};
use crate::Envelope;

/// Handles one delivery and settles it.
pub(super) async fn process<H: GroupHandler>(ctx: Arc<Ctx>, handler: Arc<H>, work: Work) -> Finish {
    let Work {
        entry,
        deliveries,
        permit: _permit,
    } = work;
    let (raw, envelope) = match admit(&ctx, entry, deliveries).await {
        Ok(admitted) => admitted,
        Err(finish) => return finish,
    };
    let event_type = envelope.event_type();
    let span = info_span!(
        "delivery",
        stream_id = %raw.id,
        event_type,
        attempt = deliveries,
        group = %ctx.group
    );
    let delivery = Delivery {
        stream_id: raw.id.clone(),
        envelope,
        deliveries,
        group: ctx.group.clone(),
    };
    async {
        let result = call(&*handler, &delivery).await;
        conclude(&ctx, raw, event_type, deliveries, result).await
    }
    .instrument(span)
    .await
}

/// The entry and its event, or how it was settled without its handler.
async fn admit(
    ctx: &Ctx,
    entry: ReadEntry,
    deliveries: u32,
) -> Result<(RawEntry, Envelope), Finish> {
    let max = ctx.config.max_deliveries.max(1);
    let Some(fields) = entry.fields else {
        let reason = "entry was deleted from the stream (trimmed?) before it was acknowledged";
        dead_letter(ctx, &entry.id, &[], reason, deliveries, "<deleted>").await;
        return Err(Finish::Settled(entry.id));
    };
    let raw = RawEntry {
        id: entry.id,
        fields,
    };
    if let Some(target) = raw.get(RETRY_FOR) {
        if target != ctx.group.as_bytes() {
            debug!(stream_id = %raw.id, retry_for = %String::from_utf8_lossy(target), "a retry for another group: acknowledged unhandled");
            return Err(Finish::Ack(raw.id));
        }
    }
    let envelope = match raw.decode() {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("undecodable entry: {e}");
            let label = raw.type_label();
            dead_letter(ctx, &raw.id, &raw.fields, &reason, deliveries, &label).await;
            return Err(Finish::Settled(raw.id));
        }
    };
    if deliveries > max {
        // Delivered too often without an outcome (e.g. the handler crashes the process).
        let reason = format!("delivered {deliveries} times, more than max_deliveries ({max})");
        let event_type = envelope.event_type();
        dead_letter(ctx, &raw.id, &raw.fields, &reason, deliveries, event_type).await;
        return Err(Finish::Settled(raw.id));
    }
    Ok((raw, envelope))
}

/// The handler's result, a panic in it turned into a transient failure.
async fn call<H: GroupHandler>(
    handler: &H,
    delivery: &Delivery,
) -> Result<Vec<Envelope>, HandlerError> {
    match AssertUnwindSafe(handler.handle(delivery))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(panic) => Err(HandlerError::Retry(format!(
            "handler panicked: {}",
            panic_message(panic.as_ref())
        ))),
    }
}

/// Acts on the handler's result: ack, publish its outputs with the ack, retry later or dead-letter.
async fn conclude(
    ctx: &Ctx,
    raw: RawEntry,
    event_type: &'static str,
    deliveries: u32,
    result: Result<Vec<Envelope>, HandlerError>,
) -> Finish {
    // What an earlier delivery of this entry could not publish goes out with this one.
    let result = result.map(|outputs| ctx.unsettled.merge(&raw.id, outputs));
    match result {
        Ok(outputs) if outputs.is_empty() => {
            ctx.stats
                .record(&ctx.group, event_type, DeliveryOutcome::Handled);
            Finish::Ack(raw.id)
        }
        Ok(outputs) => match publish_and_ack(ctx, &raw.id, &outputs).await {
            Ok(()) => {
                ctx.unsettled.forget(&raw.id);
                ctx.stats
                    .record(&ctx.group, event_type, DeliveryOutcome::Handled);
                Finish::Settled(raw.id)
            }
            Err(e) => {
                // Redis failed, not the handler: no dead letter for it (a redelivery past
                // max_deliveries is dead-lettered before its handler runs). The outputs are kept
                // for the redelivery: a handler that acted does not report its facts again.
                ctx.unsettled.keep(&raw.id, &outputs);
                let delay = default_retry_backoff().delay_for(deliveries);
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, kept = outputs.len(),
                    "could not publish the handler's outputs; the entry stays pending");
                ctx.stats
                    .record(&ctx.group, event_type, DeliveryOutcome::Failed);
                Finish::Retry { id: raw.id, delay }
            }
        },
        Err(e) => match e.policy(deliveries, ctx.config.max_deliveries) {
            ErrorPolicy::DeadLetter => {
                ctx.unsettled.forget(&raw.id);
                dead_letter(
                    ctx,
                    &raw.id,
                    &raw.fields,
                    e.reason(),
                    deliveries,
                    event_type,
                )
                .await;
                Finish::Settled(raw.id)
            }
            ErrorPolicy::RetryAfter(delay) => {
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "handler failed; retried after a delay");
                ctx.stats
                    .record(&ctx.group, event_type, DeliveryOutcome::Failed);
                Finish::Retry { id: raw.id, delay }
            }
        },
    }
}

/// [`process`], with a panic outside the handler (which `process` already catches) leaving the entry
/// pending for a retry after claim_idle instead of ending the consumer.
pub(super) async fn guarded<H: GroupHandler>(ctx: Arc<Ctx>, handler: Arc<H>, work: Work) -> Finish {
    let id = work.entry.id.clone();
    let group = ctx.group.clone();
    match AssertUnwindSafe(process(ctx, handler, work))
        .catch_unwind()
        .await
    {
        Ok(finish) => finish,
        Err(panic) => {
            warn!(%group, stream_id = %id, error = %panic_message(panic.as_ref()), "delivery failed");
            Finish::Settled(id)
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}
