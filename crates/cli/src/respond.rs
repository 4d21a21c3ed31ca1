//! The playbooks' `respond` actions, carried out by `custody-respond`.

use std::future::Future;
use std::pin::Pin;

use custody_api::contain::{Respond, RespondContext, Responded};
use custody_respond::{Context, Outcome, Responders, Revocation, Secret};

/// The configured responders, as the executor calls them.
pub struct Configured(pub Responders);

/// The revocation a playbook's `responder` names, on `target`; a webhook
/// is told the playbook as its action.
pub fn revocation(responder: &str, target: &str, playbook: &str) -> Result<Revocation, String> {
    let target = target.to_owned();
    Ok(match responder {
        "aws.deactivate_access_key" => Revocation::AwsDeactivateAccessKey {
            access_key_id: target,
            user: None,
        },
        "aws.revoke_role_sessions" => Revocation::AwsRevokeRoleSessions {
            role: role_name(&target),
        },
        "okta.clear_sessions" => Revocation::OktaClearSessions { user: target },
        "okta.suspend" => Revocation::OktaSuspend { user: target },
        "github.revoke_credential" => Revocation::GithubRevokeCredential {
            credential: Secret::new(target),
        },
        "entra.revoke_sessions" => Revocation::EntraRevokeSessions { user: target },
        "entra.disable_service_principal" => {
            Revocation::EntraDisableServicePrincipal { id: target }
        }
        other => match other.strip_prefix("webhook.") {
            Some(name) => Revocation::Webhook {
                name: name.to_owned(),
                action: format!("playbook:{playbook}"),
                target,
            },
            None => return Err(format!("unknown responder `{other}`")),
        },
    })
}

/// A role's name from its ARN, or an assumed-role session's ARN
/// (`arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`); anything else as
/// given.
fn role_name(target: &str) -> String {
    let resource = target.rsplit(':').next().unwrap_or(target);
    if let Some(rest) = resource.strip_prefix("assumed-role/") {
        return rest.split('/').next().unwrap_or(rest).to_owned();
    }
    match resource.strip_prefix("role/") {
        Some(path) => path.rsplit('/').next().unwrap_or(path).to_owned(),
        None => target.to_owned(),
    }
}

impl Respond for Configured {
    fn respond<'a>(
        &'a self,
        responder: &'a str,
        target: &'a str,
        context: &'a RespondContext,
        dry_run: bool,
    ) -> Pin<Box<dyn Future<Output = Responded> + Send + 'a>> {
        Box::pin(async move {
            let revocation = match revocation(responder, target, &context.playbook) {
                Ok(revocation) => revocation,
                Err(why) => {
                    return Responded {
                        failed: true,
                        outcome: "failed".into(),
                        detail: why,
                        record: serde_json::Value::Null,
                    };
                }
            };
            let context = Context {
                reason: context.reason.clone(),
                finding: context.finding.clone(),
                event: Some(context.event.clone()),
                run: context.run.clone(),
            };
            let record = self.0.run(&revocation, &context, dry_run).await;
            let (failed, outcome, detail) = match &record.outcome {
                Outcome::Done => (false, "done", record.detail.clone()),
                Outcome::AlreadyDone => (false, "already_done", record.detail.clone()),
                Outcome::DryRun => (false, "dry_run", record.detail.clone()),
                Outcome::Failed { reason } => (true, "failed", reason.clone()),
            };
            Responded {
                failed,
                outcome: outcome.into(),
                detail,
                record: serde_json::to_value(&record).unwrap_or_default(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_is_named_from_its_arns() {
        assert_eq!(
            role_name("arn:aws:iam::111122223333:role/deployer"),
            "deployer"
        );
        assert_eq!(
            role_name("arn:aws:iam::111122223333:role/team/deployer"),
            "deployer"
        );
        assert_eq!(
            role_name("arn:aws:sts::111122223333:assumed-role/deployer/run-7"),
            "deployer"
        );
        assert_eq!(role_name("deployer"), "deployer");
        assert!(revocation("pager.duty", "x", "").is_err());
        assert!(matches!(
            revocation("webhook.soar", "run:r", "why").unwrap(),
            Revocation::Webhook { name, .. } if name == "soar"
        ));
    }
}
