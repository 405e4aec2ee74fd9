//! Redaction of response bodies while they stream: an `http_body::Body` adapter that rewrites
//! `application/json` bodies through the streaming [`JsonRedactor`] and `text/event-stream`
//! bodies event by event (each event's JSON `data` redacted, then re-framed), so no byte leaves
//! the agent unredacted and no response is held whole.
//!
//! On malformed JSON the stream is cut (an error frame): what was already sent had been
//! redacted, and nothing unredacted follows.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame};

use super::{
    TextRedactor,
    json::{JsonLimits, JsonRedactor, SseRedactor, Summary},
};
use crate::mcp::{SseEvent, SseParser, encode};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of body is being rewritten.
pub enum Kind {
    Json(Box<JsonRedactor>),
    Sse {
        parser: SseParser,
        redactor: Box<SseRedactor>,
    },
}

/// Where the counts and pseudonyms of a response end up (read by the exchange record).
pub type Evidence = Arc<Mutex<Summary>>;

/// A body whose data frames are redacted before they are passed on.
pub struct Redacting<B> {
    inner: B,
    kind: Kind,
    evidence: Evidence,
    done: bool,
}

impl<B> Redacting<B> {
    pub fn json(inner: B, r: Arc<dyn TextRedactor>, evidence: Evidence) -> Self {
        Redacting {
            inner,
            kind: Kind::Json(Box::new(JsonRedactor::new(r, JsonLimits::default()))),
            evidence,
            done: false,
        }
    }

    pub fn sse(inner: B, r: Arc<dyn TextRedactor>, max_event: usize, evidence: Evidence) -> Self {
        Redacting {
            inner,
            kind: Kind::Sse {
                parser: SseParser::new(max_event),
                redactor: Box::new(SseRedactor::new(r, JsonLimits::default())),
            },
            evidence,
            done: false,
        }
    }

    /// Rewrites one chunk; returns the bytes to forward (possibly empty).
    fn rewrite(&mut self, chunk: &[u8]) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        match &mut self.kind {
            Kind::Json(j) => j.push(chunk, &mut out)?,
            Kind::Sse { parser, redactor } => {
                for ev in parser.push(chunk)? {
                    let ev = redact_event(redactor, ev)?;
                    out.extend_from_slice(&encode(&ev));
                }
                let s = redactor.take_summary();
                merge(&self.evidence, s);
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        if let Kind::Json(j) = &mut self.kind {
            let s = j.finish(&mut out)?;
            merge(&self.evidence, s);
        }
        Ok(out)
    }
}

fn merge(evidence: &Evidence, s: Summary) {
    let mut e = evidence.lock().unwrap_or_else(|p| p.into_inner());
    e.merge(s, 10_000);
}

/// Events whose data is JSON get it redacted; `endpoint` events and empty data pass as they are.
fn redact_event(r: &mut SseRedactor, mut ev: SseEvent) -> Result<SseEvent, BoxError> {
    if ev.event.as_deref() == Some("endpoint") || ev.data.trim().is_empty() {
        return Ok(ev);
    }
    ev.data = r.redact_data(&ev.data)?;
    Ok(ev)
}

impl<B> Body for Redacting<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: dropped (the length of the body changed anyway)
                    };
                    match this.rewrite(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => Poll::Ready(Some(Err(e))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Finding;
    use http_body_util::{BodyExt, StreamBody};

    /// Masks the word "secret" (test-only; the real detectors are in `engine`).
    struct Words;
    impl TextRedactor for Words {
        fn max_match_len(&self) -> usize {
            6
        }
        fn redact(&self, text: &str) -> (String, Vec<Finding>) {
            let n = text.matches("secret").count();
            let f = (0..n)
                .map(|_| Finding {
                    entity: "WORD".into(),
                    pseudonym: "p".into(),
                })
                .collect();
            (text.replace("secret", "[WORD]"), f)
        }
    }

    type Frames = std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>;

    fn chunks(parts: &[&str]) -> StreamBody<futures_util::stream::Iter<Frames>> {
        let v: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from(p.to_string()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(v))
    }

    #[tokio::test]
    async fn json_bodies_are_redacted_across_chunks() {
        let ev: Evidence = Arc::default();
        let body = chunks(&[
            r#"{"result":{"content":[{"text":"a sec"#,
            r#"ret b"}]},"id":1}"#,
        ]);
        let r = Redacting::json(body, Arc::new(Words), ev.clone());
        let out = r.collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["content"][0]["text"], "a [WORD] b");
        assert_eq!(ev.lock().unwrap().counts.get("WORD"), Some(&1));
    }

    #[tokio::test]
    async fn sse_events_are_redacted_one_by_one() {
        let ev: Evidence = Arc::default();
        let body = chunks(&[
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"message\":\"secret 1\"}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"text\":\"se",
            "cret 2\"}}\n\n",
        ]);
        let mut r = Redacting::sse(body, Arc::new(Words), 1 << 20, ev.clone());
        // The first event is forwarded before the second has arrived whole.
        let first = r.frame().await.unwrap().unwrap().into_data().unwrap();
        let first = String::from_utf8(first.to_vec()).unwrap();
        assert!(
            first.contains("[WORD] 1") && !first.contains("secret"),
            "{first}"
        );
        let rest = r.collect().await.unwrap().to_bytes();
        let rest = String::from_utf8(rest.to_vec()).unwrap();
        assert!(
            rest.contains("[WORD] 2") && !rest.contains("secret"),
            "{rest}"
        );
        assert_eq!(ev.lock().unwrap().counts.get("WORD"), Some(&2));
    }

    #[tokio::test]
    async fn malformed_json_cuts_the_stream() {
        let ev: Evidence = Arc::default();
        let body = chunks(&[r#"{"a":"secret"}"#, "garbage secret"]);
        let r = Redacting::json(body, Arc::new(Words), ev);
        assert!(r.collect().await.is_err());
    }
}
