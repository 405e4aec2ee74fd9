//! Just-in-time approval of privileged and bulk MCP calls.
//!
//! A call the policy allowed, but that an `[[approvals]]` rule of the policy matches (see
//! [`rules`]), is held in the agent until enough approvers approve that exact call; nothing
//! reaches the MCP server before. Pieces:
//!
//! * [`rules`]: the rules and approvers in the policy files, validated and matched;
//! * [`canon`]: canonical JSON and the request hash an approval is bound to;
//! * [`registry`]: the state machine of requests (pending, approved, released, denied,
//!   expired, abandoned, lapsed) and time-bound grants;
//! * [`gate`]: the data path: holding a call, what the caller sees, the SSE switch;
//! * [`approver`]: who decides (SO_PEERCRED uid mapped by `[[approvers]]`, or an OIDC token),
//!   and separation of duties;
//! * [`control`]: the `approvals.*` commands of the control socket (and the CLI's client side);
//! * [`api`]: the HTTP endpoint for approvers who are not on the host (OIDC bearer tokens);
//! * [`webhook`]: JSON POSTs when a call is held and when it is decided;
//! * [`event`]: the [`ApprovalEvent`] of every step, which goes to every pipeline phase
//!   ([`crate::pipeline::Phase::approval_event`]): the log today, the audit store next.
//!
//! [`Approvals`] ties them together: one per agent, shared by every service through
//! [`crate::auth::Auth::approvals`].
pub mod api;
pub mod approver;
pub mod canon;
pub mod control;
pub mod event;
pub mod gate;
pub mod registry;
pub mod rules;
pub mod webhook;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

pub use event::{ApprovalEvent, Step};

use crate::{
    config::ApprovalSettings,
    pipeline::{ExchangeRecord, Phase, Pipeline},
};
use approver::Approver;
use registry::{GrantSpec, Hold, NewRequest, Registry, RequestView, Status, VoteError};

/// The approval requests of one agent and everything that must hear about them.
pub struct Approvals {
    reg: Mutex<Registry>,
    /// Phases told about every step (the log; the audit store).
    events: Pipeline,
    webhook: Option<webhook::Webhook>,
    keepalive: Duration,
}

/// 12 lower-case hex digits from the system's CSPRNG.
fn random_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 6];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No randomness: fall back on time and a counter (ids must only be unique).
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = event::unix_ms(SystemTime::now());
        return format!("{:012x}", (t << 8 ^ n) & 0xffff_ffff_ffff);
    }
    hex::encode(b)
}

/// `2026-05-01T12:00:00Z`.
pub fn render_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Approvals {
    /// `events`: the phases that hear every step (build it before adding [`ApprovalPhase`]).
    pub fn new(
        settings: &ApprovalSettings,
        events: Pipeline,
        webhook: Option<webhook::Webhook>,
    ) -> Arc<Approvals> {
        Arc::new(Approvals {
            reg: Mutex::new(Registry::new(
                settings.max_pending,
                settings.history,
                Box::new(random_id),
            )),
            events,
            webhook,
            keepalive: Duration::from_secs(settings.keepalive_secs.max(1)),
        })
    }

    fn reg(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the registry and emits the events it produced before the registry is
    /// unlocked: the steps of a request are logged and recorded in the order the registry
    /// took them (emitted after unlocking, an `abandoned` at shutdown could be recorded after
    /// the `completed` of the exchange it ended, which another thread emitted meanwhile).
    /// Emitting does not block: logging, and queue sends to the audit writer and the webhook.
    fn with_reg<T>(&self, f: impl FnOnce(&mut Registry) -> (T, Vec<ApprovalEvent>)) -> T {
        let mut reg = self.reg();
        let (out, events) = f(&mut reg);
        self.emit(events);
        drop(reg);
        out
    }

    fn emit(&self, events: Vec<ApprovalEvent>) {
        for e in events {
            self.events.approval_event(&e);
            if let Some(w) = &self.webhook
                && e.step.notifies()
            {
                w.send(&e);
            }
        }
    }

    /// How often a held SSE stream is told it is still waiting.
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    pub(crate) fn hold(&self, new: NewRequest) -> Hold {
        self.with_reg(|r| r.hold(new, Instant::now(), SystemTime::now()))
    }

    pub(crate) fn take(&self, id: &str, waiter: u64) -> bool {
        self.with_reg(|r| r.take(id, waiter, SystemTime::now()))
    }

    pub(crate) fn caller_gone(&self, id: &str, waiter: u64) {
        self.with_reg(|r| ((), r.caller_gone(id, waiter, SystemTime::now())));
    }

    /// Expiry and housekeeping (also run every second by [`Approvals::spawn_sweeper`]).
    pub fn sweep(&self) {
        self.with_reg(|r| ((), r.sweep(Instant::now(), SystemTime::now())));
    }

    /// An approver's decision. Refused attempts are recorded too.
    pub fn vote(
        &self,
        id: &str,
        who: &Approver,
        approve: bool,
        reason: Option<String>,
        grant: Option<GrantSpec>,
    ) -> Result<Status, VoteError> {
        let reason = reason
            .map(|r| clip(r.trim(), 1000))
            .filter(|r| !r.is_empty());
        let ballot = registry::Ballot {
            approve,
            reason,
            grant,
        };
        self.with_reg(|r| r.vote(id, who, ballot, Instant::now(), SystemTime::now()))
    }

    /// Requests `visible` lets through, oldest first; closed ones only with `all`.
    pub fn list(&self, all: bool, visible: impl Fn(&RequestView) -> bool) -> Vec<RequestView> {
        self.reg()
            .list()
            .into_iter()
            .filter(|r| all || r.state.is_open())
            .map(|r| r.view())
            .filter(|v| visible(v))
            .collect()
    }

    pub fn show(&self, id: &str) -> Option<RequestView> {
        self.reg().get(id).map(|r| r.view())
    }

    /// Shutdown: every open request is abandoned; waiting callers get their error.
    pub fn abandon_all(&self) -> usize {
        self.with_reg(|r| {
            let ev = r.abandon_all(SystemTime::now());
            (ev.len(), ev)
        })
    }

    /// Runs [`Approvals::sweep`] every second until `stop`.
    pub fn spawn_sweeper(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                match me.upgrade() {
                    Some(a) => a.sweep(),
                    None => return,
                }
            }
        });
    }

    /// Lets queued webhook deliveries go out (shutdown), at most `within`.
    pub async fn flush(&self, within: Duration) {
        if let Some(w) = &self.webhook {
            w.flush(within).await;
        }
    }

    fn completed(&self, rec: &ExchangeRecord) {
        let Some(id) = rec.approval.as_deref() else {
            return;
        };
        self.with_reg(|r| {
            let ev = r.completed(id, &rec.outcome, SystemTime::now());
            ((), ev.into_iter().collect())
        });
    }
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The pipeline phase that closes an approval's trail: when the exchange of a held call is
/// over, a `completed` step with its outcome.
pub struct ApprovalPhase(pub Arc<Approvals>);

impl Phase for ApprovalPhase {
    fn name(&self) -> &'static str {
        "approval"
    }
    fn exchange_complete(&self, rec: &ExchangeRecord) {
        self.0.completed(rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_as_utc() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        assert_eq!(render_time(t), "2026-05-28T20:26:40Z");
        assert_eq!(render_time(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(render_time(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn ids_are_12_hex_digits_and_differ() {
        let a = random_id();
        let b = random_id();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
