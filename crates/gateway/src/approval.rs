//! Holding a call until someone approves or refuses it.
//!
//! The approval queue (the console, `custody approve`) arrives with
//! containment; until then a held call waits on an [`Approvals`]
//! implementation: a channel for tests and embedders ([`channel`]), or a
//! directory of files for the command line ([`Directory`]). The gateway
//! bounds the wait whatever the implementation does.

use std::path::PathBuf;
use std::time::Duration;

use custody_event::{Actor, EventId};
use tokio::sync::{mpsc, oneshot};

/// A call waiting for approval: what an approval is bound to. The call
/// forwarded once approved is exactly this one (the canonical bytes the
/// engine decided on, whose arguments have this digest), made by this
/// chain, to this server, in this session.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldCall {
    /// The event recording the call.
    pub event: EventId,
    /// The MCP method.
    pub method: String,
    /// The tool, prompt or resource asked for.
    pub target: Option<String>,
    /// Why it is held, for the approver.
    pub reason: String,
    /// Who is calling: the chain the identity layer vouched for.
    pub chain: Actor,
    /// The server the call goes to.
    pub server: String,
    /// The gateway session the call belongs to.
    pub session: String,
    /// The SHA-256 of the call's arguments in canonical JSON, if it has any.
    pub digest: Option<String>,
    /// The arguments, secrets redacted, for the approver to read.
    pub arguments: Option<serde_json::Value>,
}

/// The answer to a held call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// Forward the call.
    Approved,
    /// Refuse it.
    Refused,
    /// Nobody answered before the approval expired: refuse it.
    Expired,
}

/// Where held calls wait for an answer.
pub trait Approvals: Send + Sync + 'static {
    /// Asks about `call`; the answer arrives on the receiver. A sender
    /// dropped unanswered refuses the call.
    fn ask(&self, call: HeldCall) -> oneshot::Receiver<Approval>;
}

/// Approvals answered through a channel: each held call arrives with the
/// sender that answers it.
#[derive(Debug, Clone)]
pub struct Channel(mpsc::UnboundedSender<(HeldCall, oneshot::Sender<Approval>)>);

/// A [`Channel`] and the receiving end where held calls arrive.
pub fn channel() -> (
    Channel,
    mpsc::UnboundedReceiver<(HeldCall, oneshot::Sender<Approval>)>,
) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Channel(sender), receiver)
}

impl Approvals for Channel {
    fn ask(&self, call: HeldCall) -> oneshot::Receiver<Approval> {
        let (answer, receiver) = oneshot::channel();
        let _ = self.0.send((call, answer));
        receiver
    }
}

/// No approver: every held call is refused at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nobody;

impl Approvals for Nobody {
    fn ask(&self, _call: HeldCall) -> oneshot::Receiver<Approval> {
        // The sender drops unanswered, which refuses.
        oneshot::channel().1
    }
}

/// Approvals through files: a held call writes `DIR/EVENT_ID.held` (what it
/// is, as JSON) and waits for `DIR/EVENT_ID.approve` or
/// `DIR/EVENT_ID.refuse` to appear.
#[derive(Debug, Clone)]
pub struct Directory {
    dir: PathBuf,
    poll: Duration,
}

impl Directory {
    /// Approvals in `dir`, looked for every `poll`.
    pub fn new(dir: impl Into<PathBuf>, poll: Duration) -> Directory {
        Directory {
            dir: dir.into(),
            poll,
        }
    }
}

impl Approvals for Directory {
    fn ask(&self, call: HeldCall) -> oneshot::Receiver<Approval> {
        let (answer, receiver) = oneshot::channel();
        let (dir, poll) = (self.dir.clone(), self.poll);
        tokio::spawn(async move {
            let id = call.event.to_string();
            let held = serde_json::json!({
                "event": id, "method": call.method, "target": call.target, "reason": call.reason,
            });
            let written = tokio::fs::create_dir_all(&dir).await.is_ok()
                && tokio::fs::write(dir.join(format!("{id}.held")), held.to_string())
                    .await
                    .is_ok();
            if !written {
                // Nobody could be asked: the sender drops, refusing.
                return;
            }
            loop {
                if tokio::fs::try_exists(dir.join(format!("{id}.refuse")))
                    .await
                    .unwrap_or(false)
                {
                    let _ = answer.send(Approval::Refused);
                    return;
                }
                if tokio::fs::try_exists(dir.join(format!("{id}.approve")))
                    .await
                    .unwrap_or(false)
                {
                    let _ = answer.send(Approval::Approved);
                    return;
                }
                if answer.is_closed() {
                    return;
                }
                tokio::time::sleep(poll).await;
            }
        });
        receiver
    }
}
