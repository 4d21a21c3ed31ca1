//! What sort of action an Okta `eventType` is: the rule table.
//!
//! The first rule that matches decides, in this order:
//!
//! | `eventType` | kind |
//! | --- | --- |
//! | `user.session.*` (but `user.session.impersonation.*`, a grant), `user.authentication.*`, `policy.evaluate_sign_on` | `authentication` |
//! | `app.oauth2.*` naming a token (`app.oauth2.as.token.grant`, `app.oauth2.token.revoke`), `*.api_token.*` | `credential_use` |
//! | `*.privilege.*`, `group.user_membership.*`, `application.user_membership.*`, `user.session.impersonation.*`, `policy.*` and `*.policy.*` changes, `*.mfa.factor.*`, `system.role.*`, `iam.*`, `user.account.reset_password`, `user.account.update_password` | `privilege_change` |
//! | anything else | `other` |

use custody_event::EventKind;

/// The kind of the Okta event `event_type`.
pub(crate) fn kind(event_type: &str) -> EventKind {
    let has = |part: &str| event_type.split('.').any(|p| p == part);
    if event_type.starts_with("user.session.impersonation.") {
        EventKind::PrivilegeChange
    } else if event_type.starts_with("user.session.")
        || event_type.starts_with("user.authentication.")
        || event_type == "policy.evaluate_sign_on"
    {
        EventKind::Authentication
    } else if (event_type.starts_with("app.oauth2.") && event_type.contains("token"))
        || has("api_token")
    {
        EventKind::CredentialUse
    } else if has("privilege")
        || event_type.starts_with("group.user_membership.")
        || event_type.starts_with("application.user_membership.")
        || event_type.starts_with("policy.")
        || has("policy")
        || event_type.contains(".mfa.factor.")
        || event_type.starts_with("system.role.")
        || event_type.starts_with("iam.")
        || event_type == "user.account.reset_password"
        || event_type == "user.account.update_password"
    {
        EventKind::PrivilegeChange
    } else {
        EventKind::Other
    }
}
