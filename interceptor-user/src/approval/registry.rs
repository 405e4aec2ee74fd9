//! The state machine of approval requests and grants. Pure: no I/O, no clock of its own
//! (every transition is given `now`), so every path is unit-tested.
//!
//! ```text
//!             vote (approve), quorum not reached
//!               ┌──────┐
//!               ▼      │
//!  hold ──▶ pending ───┴──▶ approved ──take──▶ released
//!            │  │  │          │ (no caller: an identical retry within valid_for takes it)
//!            │  │  │          └──valid_for──▶ lapsed
//!            │  │  └─deny──▶ denied
//!            │  └─max_wait──▶ expired
//!            └─shutdown──▶ abandoned   (approved but not yet released: abandoned too)
//! ```
//!
//! A caller that goes away leaves its request open (`caller_gone`): a retry with the same
//! request hash re-attaches to it, or takes its approval if it was approved meanwhile.
//! Grants (time-bound, explicit) release later calls of the same caller, tool and rule
//! without holding them.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use super::approver::Approver;
use super::event::{ApprovalEvent, GrantInfo, Requester, Step, unix_ms};
use super::rules::render_duration;
use crate::policy::Expression;

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Released,
    Denied,
    Expired,
    Abandoned,
    Lapsed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Released => "released",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Abandoned => "abandoned",
            State::Lapsed => "lapsed",
        }
    }
    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Approved)
    }
}

/// What a waiting caller is told when the state changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub approvals: u32,
    pub required: u32,
}

/// The parts of the rule a request keeps (a policy reload does not change a held call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSnapshot {
    pub rule: String,
    pub approvers: Vec<String>,
    pub required: u32,
    #[serde(skip)]
    pub max_wait: Duration,
    #[serde(skip)]
    pub valid_for: Duration,
    #[serde(skip)]
    pub max_grant: Option<Duration>,
}

/// Everything about a call to hold.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub hash: String,
    pub service: String,
    pub rule: RuleSnapshot,
    pub requester: Requester,
    pub method: String,
    pub target: Option<String>,
    /// `params` without `_meta`: what approvers are shown.
    pub params: Option<Value>,
    /// `params.arguments`: what grant bounds are checked against.
    pub arguments: Option<Value>,
    /// Why it is held, for records (target redacted, argument values only as numbers).
    pub matched: String,
    /// The target as records may show it (redacted like every exchange record's).
    pub shown_target: Option<String>,
    /// The arguments as records may show them ([`super::event::summarize`] of the redacted
    /// arguments).
    pub summary: Value,
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vote {
    pub approver: String,
    #[serde(skip)]
    pub key: String,
    pub approve: bool,
    pub reason: Option<String>,
    /// ms since the epoch.
    pub at: u64,
    pub grant: Option<GrantSpec>,
}

/// One approver's decision as cast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ballot {
    pub approve: bool,
    pub reason: Option<String>,
    /// A time-bound grant to issue with the approval.
    pub grant: Option<GrantSpec>,
}

impl Ballot {
    pub fn approve(reason: Option<&str>, grant: Option<GrantSpec>) -> Ballot {
        Ballot {
            approve: true,
            reason: reason.map(str::to_string),
            grant,
        }
    }
    pub fn deny(reason: Option<&str>) -> Ballot {
        Ballot {
            approve: false,
            reason: reason.map(str::to_string),
            grant: None,
        }
    }
}

/// A time-bound grant an approver asks for with their approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    pub minutes: u32,
    /// Constraint expression on `params.arguments`; absent: the identical arguments only.
    #[serde(default)]
    pub bounds: Option<String>,
}

/// A held (or decided) call.
#[derive(Debug)]
pub struct Request {
    pub id: String,
    pub new: NewRequest,
    pub created: SystemTime,
    pub expires_wall: SystemTime,
    expires_at: Instant,
    pub state: State,
    pub votes: Vec<Vote>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub decided: Option<SystemTime>,
    approved_at: Option<Instant>,
    /// The caller waiting on this request right now, if any.
    waiter: Option<u64>,
    pub grant: Option<GrantInfo>,
    tx: watch::Sender<Status>,
}

/// What approvers and admins are shown (`approvals list|show`, HTTP).
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub id: String,
    pub state: State,
    pub service: String,
    pub rule: String,
    pub approvers: Vec<String>,
    pub requester: Requester,
    pub method: String,
    pub target: Option<String>,
    pub params: Option<Value>,
    pub matched: String,
    pub request_hash: String,
    pub created: u64,
    pub expires_at: u64,
    pub required: u32,
    pub approvals: u32,
    pub votes: Vec<Vote>,
    pub caller_waiting: bool,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub grant: Option<GrantInfo>,
    pub max_grant: Option<String>,
}

#[derive(Debug)]
struct Grant {
    info: GrantInfo,
    approval_id: String,
    service: String,
    rule: String,
    caller: (String, String, Option<String>),
    method: String,
    target: Option<String>,
    bounds: Option<Expression>,
    exact_hash: String,
    expires_at: Instant,
}

/// What happens to a call that matched a rule.
#[derive(Debug)]
pub enum Hold {
    /// Forward it now: a grant covers it (`grant`), or an identical call was approved while
    /// its caller was gone.
    Release { id: String, grant: Option<String> },
    /// Wait for a decision on approval `id`.
    Wait {
        id: String,
        waiter: u64,
        rx: watch::Receiver<Status>,
        expires_at: Instant,
    },
    /// Not held, refused (too many pending requests).
    Refuse(String),
}

/// A vote that was not counted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    #[error("no approval request {0}")]
    Unknown(String),
    #[error("approval {id} is already {state}")]
    Closed { id: String, state: &'static str },
    #[error("{0}")]
    Refused(String),
}

/// The requests and grants of one agent.
pub struct Registry {
    requests: HashMap<String, Request>,
    /// Ids in creation order.
    order: VecDeque<String>,
    grants: Vec<Grant>,
    next_waiter: u64,
    max_pending: usize,
    history: usize,
    new_id: Box<dyn FnMut() -> String + Send>,
    /// Shutting down: nothing new is held.
    closed: bool,
}

/// Events to emit once the registry lock is released.
pub type Events = Vec<ApprovalEvent>;

impl Request {
    fn status(&self) -> Status {
        Status {
            state: self.state,
            actor: self.actor.clone(),
            reason: self.reason.clone(),
            approvals: self.approvals(),
            required: self.new.rule.required,
        }
    }

    fn approvals(&self) -> u32 {
        self.votes.iter().filter(|v| v.approve).count() as u32
    }

    fn set(&mut self, state: State, now: SystemTime) {
        self.state = state;
        if !state.is_open() || state == State::Approved {
            self.decided.get_or_insert(now);
        }
        let _ = self.tx.send(self.status());
    }

    /// The event of `step` for this request.
    pub fn event(&self, step: Step, now: SystemTime) -> ApprovalEvent {
        ApprovalEvent {
            approval_id: self.id.clone(),
            step,
            request_hash: self.new.hash.clone(),
            service: self.new.service.clone(),
            rule: self.new.rule.rule.clone(),
            requester: self.new.requester.clone(),
            method: self.new.method.clone(),
            target: self.new.shown_target.clone(),
            arguments: self.new.summary.clone(),
            matched: self.new.matched.clone(),
            actor: None,
            reason: None,
            approvals: self.approvals(),
            required: self.new.rule.required,
            grant: None,
            outcome: None,
            expires_at: unix_ms(self.expires_wall),
            time: unix_ms(now),
        }
    }

    fn event_by(
        &self,
        step: Step,
        now: SystemTime,
        actor: &str,
        reason: Option<&str>,
    ) -> ApprovalEvent {
        let mut e = self.event(step, now);
        e.actor = Some(actor.to_string());
        e.reason = reason.map(str::to_string);
        e
    }

    pub fn view(&self) -> RequestView {
        RequestView {
            id: self.id.clone(),
            state: self.state,
            service: self.new.service.clone(),
            rule: self.new.rule.rule.clone(),
            approvers: self.new.rule.approvers.clone(),
            requester: self.new.requester.clone(),
            method: self.new.method.clone(),
            target: self.new.target.clone(),
            params: self.new.params.clone(),
            matched: self.new.matched.clone(),
            request_hash: self.new.hash.clone(),
            created: unix_ms(self.created),
            expires_at: unix_ms(self.expires_wall),
            required: self.new.rule.required,
            approvals: self.approvals(),
            votes: self.votes.clone(),
            caller_waiting: self.waiter.is_some(),
            decided_by: self.actor.clone(),
            reason: self.reason.clone(),
            grant: self.grant.clone(),
            max_grant: self.new.rule.max_grant.map(render_duration),
        }
    }
}

impl Registry {
    pub fn new(
        max_pending: usize,
        history: usize,
        new_id: Box<dyn FnMut() -> String + Send>,
    ) -> Registry {
        Registry {
            requests: HashMap::new(),
            order: VecDeque::new(),
            grants: Vec::new(),
            next_waiter: 1,
            max_pending,
            history,
            new_id,
            closed: false,
        }
    }

    fn fresh_id(&mut self) -> String {
        loop {
            let id = (self.new_id)();
            if !self.requests.contains_key(&id) && !self.grants.iter().any(|g| g.info.id == id) {
                return id;
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Request> {
        self.requests.get(id)
    }

    /// Every request, oldest first.
    pub fn list(&self) -> Vec<&Request> {
        self.order
            .iter()
            .filter_map(|id| self.requests.get(id))
            .collect()
    }

    pub fn pending(&self) -> usize {
        self.requests
            .values()
            .filter(|r| r.state == State::Pending)
            .count()
    }

    /// A call matched a rule: release it (grant, earlier approval), attach it to an open
    /// request for the identical call, or hold it as a new request.
    pub fn hold(&mut self, new: NewRequest, now: Instant, wall: SystemTime) -> (Hold, Events) {
        let mut events = self.sweep(now, wall);
        // 1. A grant covers it.
        let caller = (
            new.requester.issuer.clone(),
            new.requester.subject.clone(),
            new.requester.client_id.clone(),
        );
        if let Some(g) = self.grants.iter().find(|g| {
            g.expires_at > now
                && g.service == new.service
                && g.rule == new.rule.rule
                && g.caller == caller
                && g.method == new.method
                && g.target == new.target
                && match &g.bounds {
                    Some(b) => b.holds(new.arguments.as_ref()),
                    None => g.exact_hash == new.hash,
                }
        }) {
            let approval_id = g.approval_id.clone();
            let info = g.info.clone();
            let mut e = match self.requests.get(&approval_id) {
                Some(r) => {
                    let mut e = r.event(Step::Released, wall);
                    e.request_hash = new.hash.clone();
                    e.arguments = new.summary.clone();
                    e.matched = new.matched.clone();
                    e
                }
                None => detached_event(&approval_id, &new, Step::Released, wall),
            };
            e.grant = Some(info.clone());
            e.reason = Some(format!("under grant {}", info.id));
            events.push(e);
            return (
                Hold::Release {
                    id: approval_id,
                    grant: Some(info.id),
                },
                events,
            );
        }
        // 2. An identical call was approved while its caller was gone: take that approval.
        if let Some(r) = self
            .requests
            .values_mut()
            .find(|r| r.state == State::Approved && r.waiter.is_none() && r.new.hash == new.hash)
        {
            r.set(State::Released, wall);
            events.push(r.event(Step::Released, wall));
            return (
                Hold::Release {
                    id: r.id.clone(),
                    grant: None,
                },
                events,
            );
        }
        if self.closed {
            return (
                Hold::Refuse("the agent is shutting down: nothing new is held".into()),
                events,
            );
        }
        // 3. Re-attach to an open request for the identical call whose caller is gone.
        let waiter = self.next_waiter;
        self.next_waiter += 1;
        if let Some(r) = self
            .requests
            .values_mut()
            .find(|r| r.state == State::Pending && r.waiter.is_none() && r.new.hash == new.hash)
        {
            r.waiter = Some(waiter);
            // The retry may come from another connection: record where it came from now.
            r.new.requester = new.requester.clone();
            events.push(r.event(Step::Reattached, wall));
            return (
                Hold::Wait {
                    id: r.id.clone(),
                    waiter,
                    rx: r.tx.subscribe(),
                    expires_at: r.expires_at,
                },
                events,
            );
        }
        // 4. A new request.
        if self.pending() >= self.max_pending {
            return (
                Hold::Refuse(format!(
                    "too many calls are awaiting approval ({}); retry later",
                    self.max_pending
                )),
                events,
            );
        }
        let id = self.fresh_id();
        let expires_at = now + new.rule.max_wait;
        let status = Status {
            state: State::Pending,
            actor: None,
            reason: None,
            approvals: 0,
            required: new.rule.required,
        };
        let (tx, rx) = watch::channel(status);
        let r = Request {
            id: id.clone(),
            expires_wall: wall + new.rule.max_wait,
            created: wall,
            expires_at,
            new,
            state: State::Pending,
            votes: Vec::new(),
            actor: None,
            reason: None,
            decided: None,
            approved_at: None,
            waiter: Some(waiter),
            grant: None,
            tx,
        };
        events.push(r.event(Step::Held, wall));
        self.requests.insert(id.clone(), r);
        self.order.push_back(id.clone());
        (
            Hold::Wait {
                id,
                waiter,
                rx,
                expires_at,
            },
            events,
        )
    }

    /// The waiting caller saw `Approved` and goes ahead. `false` when it is no longer the
    /// request's waiter or the request is no longer approved.
    pub fn take(&mut self, id: &str, waiter: u64, wall: SystemTime) -> (bool, Events) {
        let Some(r) = self.requests.get_mut(id) else {
            return (false, Vec::new());
        };
        if r.state != State::Approved || r.waiter != Some(waiter) {
            return (false, Vec::new());
        }
        r.waiter = None;
        r.set(State::Released, wall);
        (true, vec![r.event(Step::Released, wall)])
    }

    /// The waiting caller went away (connection closed, agent cancelled the exchange).
    pub fn caller_gone(&mut self, id: &str, waiter: u64, wall: SystemTime) -> Events {
        let Some(r) = self.requests.get_mut(id) else {
            return Vec::new();
        };
        if r.waiter != Some(waiter) {
            return Vec::new();
        }
        r.waiter = None;
        if r.state.is_open() {
            vec![r.event(Step::CallerGone, wall)]
        } else {
            Vec::new()
        }
    }

    /// An approver decides on `id`. Refusals are events too (and errors for the approver).
    pub fn vote(
        &mut self,
        id: &str,
        who: &Approver,
        ballot: Ballot,
        now: Instant,
        wall: SystemTime,
    ) -> (Result<Status, VoteError>, Events) {
        let Ballot {
            approve,
            reason,
            grant,
        } = ballot;
        let mut events = self.sweep(now, wall);
        let Some(r) = self.requests.get_mut(id) else {
            return (Err(VoteError::Unknown(id.to_string())), events);
        };
        let refuse = |r: &Request, why: String, events: &mut Events| {
            events.push(r.event_by(Step::Refused, wall, &who.display, Some(&why)));
            Err(VoteError::Refused(why))
        };
        if r.state != State::Pending {
            return (
                Err(VoteError::Closed {
                    id: id.to_string(),
                    state: r.state.as_str(),
                }),
                events,
            );
        }
        let req = &r.new.requester;
        if who.is_requester(&req.issuer, &req.subject, req.uid) {
            let why = format!(
                "{} may not decide on their own request (separation of duties: the request came from subject {:?})",
                who.display, req.subject
            );
            return (refuse(r, why, &mut events), events);
        }
        if !who.groups.iter().any(|g| r.new.rule.approvers.contains(g)) {
            let why = format!(
                "{} is not an approver of rule {} (needs one of the groups [{}])",
                who.display,
                r.new.rule.rule,
                r.new.rule.approvers.join(", ")
            );
            return (refuse(r, why, &mut events), events);
        }
        if let Some(v) = r.votes.iter().find(|v| v.key == who.key) {
            let why = format!(
                "{} already {} this request; approvals must come from {} different people",
                who.display,
                if v.approve { "approved" } else { "denied" },
                r.new.rule.required
            );
            return (refuse(r, why, &mut events), events);
        }
        if !approve && reason.as_deref().is_none_or(|s| s.trim().is_empty()) {
            return (
                Err(VoteError::Refused("a denial needs a reason".into())),
                events,
            );
        }
        if let Some(g) = &grant
            && let Err(why) = check_grant(r, g)
        {
            return (refuse(r, why, &mut events), events);
        }
        r.votes.push(Vote {
            approver: who.display.clone(),
            key: who.key.clone(),
            approve,
            reason: reason.clone(),
            at: unix_ms(wall),
            grant: grant.clone(),
        });
        if !approve {
            r.actor = Some(who.display.clone());
            r.reason = reason.clone();
            r.set(State::Denied, wall);
            events.push(r.event_by(Step::Denied, wall, &who.display, reason.as_deref()));
            return (Ok(r.status()), events);
        }
        events.push(r.event_by(Step::Vote, wall, &who.display, reason.as_deref()));
        if r.approvals() < r.new.rule.required {
            let _ = r.tx.send(r.status());
            return (Ok(r.status()), events);
        }
        // Quorum: approved. A grant is issued when every counted approval asked for the same.
        r.actor = Some(
            r.votes
                .iter()
                .filter(|v| v.approve)
                .map(|v| v.approver.clone())
                .collect::<Vec<_>>()
                .join(", "),
        );
        r.reason = reason.clone();
        r.approved_at = Some(now);
        let specs: Vec<&Option<GrantSpec>> = r
            .votes
            .iter()
            .filter(|v| v.approve)
            .map(|v| &v.grant)
            .collect();
        let agreed = match specs.first() {
            Some(Some(first)) if specs.iter().all(|s| s.as_ref() == Some(first)) => {
                Some(first.clone())
            }
            _ => None,
        };
        let mut grant_event = None;
        if let Some(spec) = agreed {
            let gid = (self.new_id)();
            let r = self.requests.get_mut(id).expect("present");
            let ttl = Duration::from_secs(u64::from(spec.minutes) * 60);
            let info = GrantInfo {
                id: gid,
                bounds: spec.bounds.clone(),
                expires_at: unix_ms(wall + ttl),
            };
            self.grants.push(Grant {
                info: info.clone(),
                approval_id: r.id.clone(),
                service: r.new.service.clone(),
                rule: r.new.rule.rule.clone(),
                caller: (
                    r.new.requester.issuer.clone(),
                    r.new.requester.subject.clone(),
                    r.new.requester.client_id.clone(),
                ),
                method: r.new.method.clone(),
                target: r.new.target.clone(),
                bounds: spec
                    .bounds
                    .as_deref()
                    .and_then(|b| Expression::parse(b).ok()),
                exact_hash: r.new.hash.clone(),
                expires_at: now + ttl,
            });
            r.grant = Some(info.clone());
            let mut e = r.event_by(Step::Granted, wall, r.actor.as_deref().unwrap_or(""), None);
            e.grant = Some(info);
            grant_event = Some(e);
        }
        let r = self.requests.get_mut(id).expect("present");
        r.set(State::Approved, wall);
        let mut e = r.event_by(
            Step::Approved,
            wall,
            r.actor.as_deref().unwrap_or(""),
            reason.as_deref(),
        );
        e.grant = r.grant.clone();
        events.push(e);
        events.extend(grant_event);
        (Ok(r.status()), events)
    }

    /// Expires pending requests past `max_wait`, voids unused approvals past `valid_for`,
    /// drops expired grants and old history.
    pub fn sweep(&mut self, now: Instant, wall: SystemTime) -> Events {
        let mut events = Vec::new();
        for r in self.requests.values_mut() {
            match r.state {
                State::Pending if now >= r.expires_at => {
                    r.actor = Some("agent".into());
                    r.reason = Some(format!(
                        "no decision within {} ({} of {} approvals)",
                        render_duration(r.new.rule.max_wait),
                        r.approvals(),
                        r.new.rule.required
                    ));
                    r.set(State::Expired, wall);
                    let reason = r.reason.clone();
                    events.push(r.event_by(Step::Expired, wall, "agent", reason.as_deref()));
                }
                State::Approved
                    if r.waiter.is_none()
                        && r.approved_at
                            .is_some_and(|t| now >= t + r.new.rule.valid_for) =>
                {
                    r.reason = Some(format!(
                        "approved but not used within {}",
                        render_duration(r.new.rule.valid_for)
                    ));
                    r.set(State::Lapsed, wall);
                    let reason = r.reason.clone();
                    events.push(r.event_by(Step::Lapsed, wall, "agent", reason.as_deref()));
                }
                _ => {}
            }
        }
        self.grants.retain(|g| g.expires_at > now);
        // History: keep every open request, and the newest `history` closed ones.
        let closed = self
            .order
            .iter()
            .filter(|id| self.requests.get(*id).is_some_and(|r| !r.state.is_open()))
            .count();
        let mut excess = closed.saturating_sub(self.history);
        if excess > 0 {
            let granted: std::collections::HashSet<&str> =
                self.grants.iter().map(|g| g.approval_id.as_str()).collect();
            let mut drop = Vec::new();
            for id in &self.order {
                if excess == 0 {
                    break;
                }
                if let Some(r) = self.requests.get(id)
                    && !r.state.is_open()
                    && !granted.contains(id.as_str())
                {
                    drop.push(id.clone());
                    excess -= 1;
                }
            }
            for id in drop {
                self.requests.remove(&id);
            }
            self.order.retain(|id| self.requests.contains_key(id));
        }
        events
    }

    /// The agent is shutting down: every open request is abandoned.
    pub fn abandon_all(&mut self, wall: SystemTime) -> Events {
        self.closed = true;
        let mut events = Vec::new();
        for id in &self.order {
            if let Some(r) = self.requests.get_mut(id)
                && r.state.is_open()
            {
                r.actor = Some("agent".into());
                r.reason = Some("agent shutting down".into());
                r.set(State::Abandoned, wall);
                events.push(r.event_by(
                    Step::Abandoned,
                    wall,
                    "agent",
                    Some("agent shutting down"),
                ));
            }
        }
        events
    }

    /// `id`'s event for a finished exchange.
    pub fn completed(&self, id: &str, outcome: &str, wall: SystemTime) -> Option<ApprovalEvent> {
        let r = self.requests.get(id)?;
        let mut e = r.event(Step::Completed, wall);
        e.outcome = Some(outcome.to_string());
        Some(e)
    }
}

fn check_grant(r: &Request, g: &GrantSpec) -> Result<(), String> {
    let Some(max) = r.new.rule.max_grant else {
        return Err(format!(
            "rule {} allows no time-bound grants (max_grant is not set)",
            r.new.rule.rule
        ));
    };
    if g.minutes == 0 || Duration::from_secs(u64::from(g.minutes) * 60) > max {
        return Err(format!(
            "a grant of {} minutes is outside what rule {} allows (1 minute to {})",
            g.minutes,
            r.new.rule.rule,
            render_duration(max)
        ));
    }
    if let Some(b) = &g.bounds {
        let e = Expression::parse(b).map_err(|e| format!("grant bounds: {e}"))?;
        if !e.holds(r.new.arguments.as_ref()) {
            return Err(format!(
                "grant bounds {:?} do not cover the request being approved ({})",
                b,
                super::rules::describe_paths(&e, r.new.arguments.as_ref()).join(", ")
            ));
        }
    }
    Ok(())
}

fn detached_event(id: &str, new: &NewRequest, step: Step, wall: SystemTime) -> ApprovalEvent {
    ApprovalEvent {
        approval_id: id.to_string(),
        step,
        request_hash: new.hash.clone(),
        service: new.service.clone(),
        rule: new.rule.rule.clone(),
        requester: new.requester.clone(),
        method: new.method.clone(),
        target: new.shown_target.clone(),
        arguments: new.summary.clone(),
        matched: new.matched.clone(),
        actor: None,
        reason: None,
        approvals: 0,
        required: new.rule.required,
        grant: None,
        outcome: None,
        expires_at: 0,
        time: unix_ms(wall),
    }
}

#[cfg(test)]
mod tests {
    use super::Ballot;
    use super::*;
    use crate::approval::approver::Via;
    use serde_json::json;

    fn registry() -> Registry {
        let mut n = 0u32;
        Registry::new(
            100,
            10,
            Box::new(move || {
                n += 1;
                format!("id{n}")
            }),
        )
    }

    fn rule(required: u32) -> RuleSnapshot {
        RuleSnapshot {
            rule: "t.policy.toml:approvals[bulk]".into(),
            approvers: vec!["dpo".into()],
            required,
            max_wait: Duration::from_secs(60),
            valid_for: Duration::from_secs(30),
            max_grant: Some(Duration::from_secs(3600)),
        }
    }

    fn call(subject: &str, limit: i64, required: u32) -> NewRequest {
        let args = json!({"limit": limit});
        NewRequest {
            hash: format!("h-{subject}-{limit}"),
            service: "crm".into(),
            rule: rule(required),
            requester: Requester {
                subject: subject.into(),
                issuer: "https://idp".into(),
                client_id: Some("mcp-cli".into()),
                uid: Some(1000),
                comm: Some("python3".into()),
                caller_kind: "local".into(),
                peer: "127.0.0.1:5555".into(),
            },
            method: "tools/call".into(),
            target: Some("export_customers".into()),
            params: Some(json!({"name": "export_customers", "arguments": args})),
            summary: crate::approval::event::summarize(&args),
            arguments: Some(args),
            matched: "m".into(),
            shown_target: Some("export_customers".into()),
        }
    }

    fn uid_approver(name: &str, uid: u32, subjects: &[&str], groups: &[&str]) -> Approver {
        Approver {
            key: format!("approver:{name}"),
            display: format!("{name} (uid {uid})"),
            via: Via::Uid { uid },
            groups: groups.iter().map(|s| s.to_string()).collect(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn token_approver(subject: &str, groups: &[&str]) -> Approver {
        Approver {
            key: format!("subject:https://idp#{subject}"),
            display: format!("{subject} (token https://idp)"),
            via: Via::Token {
                issuer: "https://idp".into(),
                subject: subject.into(),
            },
            groups: groups.iter().map(|s| s.to_string()).collect(),
            subjects: vec![subject.into()],
        }
    }

    fn steps(ev: &Events) -> Vec<Step> {
        ev.iter().map(|e| e.step).collect()
    }

    fn wait(h: Hold) -> (String, u64, watch::Receiver<Status>) {
        match h {
            Hold::Wait { id, waiter, rx, .. } => (id, waiter, rx),
            other => panic!("expected Wait, got {other:?}"),
        }
    }

    #[test]
    fn approve_then_take_releases_exactly_once() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (h, ev) = r.hold(call("bob", 500, 1), t0, w0);
        assert_eq!(steps(&ev), vec![Step::Held]);
        assert_eq!(ev[0].request_hash, "h-bob-500");
        assert_eq!(ev[0].arguments, json!({"limit": 500}));
        let (id, waiter, rx) = wait(h);
        let dana = uid_approver("dana", 4001, &["dana"], &["dpo"]);
        let (st, ev) = r.vote(&id, &dana, Ballot::approve(Some("ok"), None), t0, w0);
        assert_eq!(st.unwrap().state, State::Approved);
        assert_eq!(steps(&ev), vec![Step::Vote, Step::Approved]);
        assert_eq!(ev[1].actor.as_deref(), Some("dana (uid 4001)"));
        assert_eq!(rx.borrow().state, State::Approved);
        let (ok, ev) = r.take(&id, waiter, w0);
        assert!(ok);
        assert_eq!(steps(&ev), vec![Step::Released]);
        assert!(!r.take(&id, waiter, w0).0, "released once");
        // A decided request takes no more votes.
        let erin = uid_approver("erin", 4002, &["erin"], &["dpo"]);
        let (st, _) = r.vote(&id, &erin, Ballot::approve(None, None), t0, w0);
        assert!(matches!(st, Err(VoteError::Closed { .. })), "{st:?}");
    }

    #[test]
    fn deny_needs_a_reason_and_is_final() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (id, _, rx) = wait(r.hold(call("bob", 500, 2), t0, w0).0);
        let dana = uid_approver("dana", 4001, &[], &["dpo"]);
        let (st, ev) = r.vote(&id, &dana, Ballot::deny(None), t0, w0);
        assert!(matches!(st, Err(VoteError::Refused(_))));
        assert!(ev.is_empty());
        let (st, ev) = r.vote(&id, &dana, Ballot::deny(Some("too broad")), t0, w0);
        assert_eq!(st.unwrap().state, State::Denied);
        assert_eq!(steps(&ev), vec![Step::Denied]);
        assert_eq!(ev[0].reason.as_deref(), Some("too broad"));
        let s = rx.borrow().clone();
        assert_eq!(s.state, State::Denied);
        assert_eq!(s.actor.as_deref(), Some("dana (uid 4001)"));
        assert_eq!(s.reason.as_deref(), Some("too broad"));
    }

    #[test]
    fn separation_of_duties_by_token_subject_mapped_subject_and_uid() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (id, _, _) = wait(r.hold(call("bob", 500, 1), t0, w0).0);
        // Bob's own token (another session, another client: same subject).
        let bob = token_approver("bob", &["dpo"]);
        let (st, ev) = r.vote(&id, &bob, Ballot::approve(None, None), t0, w0);
        match st {
            Err(VoteError::Refused(why)) => assert!(why.contains("own request"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(steps(&ev), vec![Step::Refused]);
        // Bob acting by uid: his approvers entry lists his subject.
        let bob_uid = uid_approver("bob", 4003, &["bob"], &["dpo"]);
        assert!(matches!(
            r.vote(&id, &bob_uid, Ballot::approve(None, None), t0, w0).0,
            Err(VoteError::Refused(_))
        ));
        // The uid the call came from, whoever the entry says it is.
        let same_uid = uid_approver("shared", 1000, &[], &["dpo"]);
        assert!(matches!(
            r.vote(&id, &same_uid, Ballot::approve(None, None), t0, w0)
                .0,
            Err(VoteError::Refused(_))
        ));
        // Not in an approver group.
        let carol = token_approver("carol", &["crm-admins"]);
        match r.vote(&id, &carol, Ballot::approve(None, None), t0, w0).0 {
            Err(VoteError::Refused(why)) => assert!(why.contains("not an approver"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.get(&id).unwrap().state, State::Pending);
        assert!(r.get(&id).unwrap().votes.is_empty());
    }

    #[test]
    fn two_approvals_from_two_people() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (id, waiter, rx) = wait(r.hold(call("bob", 6000, 2), t0, w0).0);
        let dana_uid = uid_approver("dana", 4001, &["dana"], &["dpo"]);
        let (st, ev) = r.vote(&id, &dana_uid, Ballot::approve(None, None), t0, w0);
        let st = st.unwrap();
        assert_eq!(
            (st.state, st.approvals, st.required),
            (State::Pending, 1, 2)
        );
        assert_eq!(steps(&ev), vec![Step::Vote]);
        assert_eq!(rx.borrow().approvals, 1);
        assert!(!r.take(&id, waiter, w0).0, "one approval is not enough");
        // Dana again, now with her token: the same person.
        let mut dana_token = token_approver("dana", &["dpo"]);
        dana_token.key = "approver:dana".into();
        match r
            .vote(&id, &dana_token, Ballot::approve(None, None), t0, w0)
            .0
        {
            Err(VoteError::Refused(why)) => assert!(why.contains("already approved"), "{why}"),
            other => panic!("{other:?}"),
        }
        let erin = token_approver("erin", &["dpo"]);
        let (st, ev) = r.vote(&id, &erin, Ballot::approve(None, None), t0, w0);
        assert_eq!(st.unwrap().state, State::Approved);
        assert_eq!(steps(&ev), vec![Step::Vote, Step::Approved]);
        assert!(r.take(&id, waiter, w0).0);
    }

    #[test]
    fn expiry_and_lapse() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (id, _, rx) = wait(r.hold(call("bob", 500, 1), t0, w0).0);
        assert!(r.sweep(t0 + Duration::from_secs(59), w0).is_empty());
        let ev = r.sweep(t0 + Duration::from_secs(60), w0);
        assert_eq!(steps(&ev), vec![Step::Expired]);
        assert!(
            ev[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("no decision within 1m")
        );
        assert_eq!(rx.borrow().state, State::Expired);
        // Approved while the caller was gone, never used: lapses after valid_for.
        let (id2, waiter, _) = wait(r.hold(call("bob", 501, 1), t0, w0).0);
        assert_eq!(
            steps(&r.caller_gone(&id2, waiter, w0)),
            vec![Step::CallerGone]
        );
        let dana = uid_approver("dana", 4001, &[], &["dpo"]);
        r.vote(&id2, &dana, Ballot::approve(None, None), t0, w0)
            .0
            .unwrap();
        assert!(r.sweep(t0 + Duration::from_secs(29), w0).is_empty());
        let ev = r.sweep(t0 + Duration::from_secs(30), w0);
        assert_eq!(steps(&ev), vec![Step::Lapsed]);
        assert_ne!(id, id2);
    }

    #[test]
    fn a_retry_reattaches_or_takes_an_approval_given_while_the_caller_was_gone() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (id, waiter, _) = wait(r.hold(call("bob", 500, 1), t0, w0).0);
        // While the first caller waits, an identical call is a separate request.
        let (other, _, _) = wait(r.hold(call("bob", 500, 1), t0, w0).0);
        assert_ne!(other, id);
        // The first caller goes; its retry re-attaches to the same request.
        r.caller_gone(&id, waiter, w0);
        let (h, ev) = r.hold(call("bob", 500, 1), t0, w0);
        let (again, waiter2, _) = wait(h);
        assert_eq!(again, id);
        assert_eq!(steps(&ev), vec![Step::Reattached]);
        // Gone again, approved meanwhile: the next retry is released at once.
        r.caller_gone(&id, waiter2, w0);
        let dana = uid_approver("dana", 4001, &[], &["dpo"]);
        r.vote(&id, &dana, Ballot::approve(None, None), t0, w0)
            .0
            .unwrap();
        let (h, ev) = r.hold(call("bob", 500, 1), t0, w0);
        assert!(
            matches!(h, Hold::Release { ref id, grant: None } if *id == again),
            "{h:?}"
        );
        assert_eq!(steps(&ev), vec![Step::Released]);
        // A different argument is never released by it.
        let (h, _) = r.hold(call("bob", 501, 1), t0, w0);
        assert!(matches!(h, Hold::Wait { .. }));
    }

    #[test]
    fn grants_release_calls_within_their_bounds_until_they_expire() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (id, waiter, _) = wait(r.hold(call("bob", 500, 1), t0, w0).0);
        let dana = uid_approver("dana", 4001, &[], &["dpo"]);
        // Bounds must cover the request itself; length within max_grant.
        let bad = GrantSpec {
            minutes: 10,
            bounds: Some("limit <= 100".into()),
        };
        match r
            .vote(&id, &dana, Ballot::approve(None, Some(bad)), t0, w0)
            .0
        {
            Err(VoteError::Refused(why)) => assert!(why.contains("do not cover"), "{why}"),
            other => panic!("{other:?}"),
        }
        let long = GrantSpec {
            minutes: 61,
            bounds: None,
        };
        assert!(matches!(
            r.vote(&id, &dana, Ballot::approve(None, Some(long)), t0, w0)
                .0,
            Err(VoteError::Refused(_))
        ));
        let spec = GrantSpec {
            minutes: 10,
            bounds: Some("limit <= 1000".into()),
        };
        let (st, ev) = r.vote(&id, &dana, Ballot::approve(None, Some(spec)), t0, w0);
        st.unwrap();
        assert_eq!(steps(&ev), vec![Step::Vote, Step::Approved, Step::Granted]);
        assert!(r.take(&id, waiter, w0).0);
        // Within bounds: released without holding; outside: held; another caller: held.
        let (h, ev) = r.hold(call("bob", 900, 1), t0 + Duration::from_secs(60), w0);
        assert!(matches!(h, Hold::Release { grant: Some(_), .. }), "{h:?}");
        assert_eq!(ev[0].request_hash, "h-bob-900");
        assert!(ev[0].grant.is_some());
        assert!(matches!(
            r.hold(call("bob", 1001, 1), t0, w0).0,
            Hold::Wait { .. }
        ));
        assert!(matches!(
            r.hold(call("alice", 900, 1), t0, w0).0,
            Hold::Wait { .. }
        ));
        // Expired grant: held again.
        assert!(matches!(
            r.hold(call("bob", 900, 1), t0 + Duration::from_secs(600), w0)
                .0,
            Hold::Wait { .. }
        ));
    }

    #[test]
    fn a_grant_needs_every_approver_to_agree() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (id, _, _) = wait(r.hold(call("bob", 500, 2), t0, w0).0);
        let g = GrantSpec {
            minutes: 5,
            bounds: None,
        };
        let dana = uid_approver("dana", 4001, &[], &["dpo"]);
        let erin = uid_approver("erin", 4002, &[], &["dpo"]);
        r.vote(&id, &dana, Ballot::approve(None, Some(g)), t0, w0)
            .0
            .unwrap();
        let (st, ev) = r.vote(&id, &erin, Ballot::approve(None, None), t0, w0);
        assert_eq!(st.unwrap().state, State::Approved);
        assert_eq!(steps(&ev), vec![Step::Vote, Step::Approved], "no grant");
    }

    #[test]
    fn shutdown_abandons_open_requests_and_pending_cap_refuses() {
        let mut r = Registry::new(1, 10, Box::new(|| "only".to_string()));
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let (_, _, rx) = wait(r.hold(call("bob", 500, 1), t0, w0).0);
        let mut n = 0;
        r.new_id = Box::new(move || {
            n += 1;
            format!("x{n}")
        });
        assert!(matches!(
            r.hold(call("bob", 501, 1), t0, w0).0,
            Hold::Refuse(_)
        ));
        let ev = r.abandon_all(w0);
        assert_eq!(steps(&ev), vec![Step::Abandoned]);
        assert_eq!(rx.borrow().state, State::Abandoned);
        assert!(r.abandon_all(w0).is_empty());
        // Shutting down: nothing new is held.
        match r.hold(call("bob", 502, 1), t0, w0).0 {
            Hold::Refuse(why) => assert!(why.contains("shutting down"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_is_bounded() {
        let mut r = registry();
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let dana = uid_approver("dana", 4001, &[], &["dpo"]);
        for i in 0..25 {
            let (id, _, _) = wait(r.hold(call("bob", i, 1), t0, w0).0);
            r.vote(&id, &dana, Ballot::deny(Some("no")), t0, w0)
                .0
                .unwrap();
        }
        r.sweep(t0, w0);
        assert_eq!(r.list().len(), 10);
    }
}
