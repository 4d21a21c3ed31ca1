//! What sort of action a GitHub audit log `action` is: the rule table.
//!
//! The first rule that matches decides, in this order:
//!
//! | `action` | kind |
//! | --- | --- |
//! | `*.login`, `*.failed_login`, `*.sso_response`, `*.two_factor_authentication_*` challenges | `authentication` |
//! | `personal_access_token.*`, `oauth_access.*`, `oauth_authorization.*`, an `integration_installation.*` or any action naming a `token` | `credential_use` |
//! | `git.clone`, `git.fetch`, `git.push`, `repo.download_zip`, a webhook `push` | `data_access` |
//! | a member or collaborator added, removed, invited or changed (`org.add_member`, `team.add_member`, `repo.add_member`, `*.update_member`, `*.invite_*`), `team.add_repository`, `*permission*`, `*admin*`, `protected_branch.*`, `repository_ruleset.*`, `business.*`, `business_*`, `enterprise.*`, `ip_allow_list*`, `public_key.*`, `deploy_key.*`, `*_moderators.*`, org security settings (`*saml*`, `*two_factor*`, `*oauth_app_restrictions*`), `repo.access` | `privilege_change` |
//! | anything else | `other` |

use custody_event::EventKind;

/// The kind of the GitHub action `action`.
pub(crate) fn kind(action: &str) -> EventKind {
    let (family, verb) = action.split_once('.').unwrap_or(("", action));
    if verb == "login"
        || verb == "failed_login"
        || verb == "sso_response"
        || verb.starts_with("two_factor_authentication_challenge")
    {
        EventKind::Authentication
    } else if matches!(
        family,
        "personal_access_token" | "oauth_access" | "oauth_authorization"
    ) || action.contains("token")
    {
        EventKind::CredentialUse
    } else if matches!(
        action,
        "git.clone" | "git.fetch" | "git.push" | "repo.download_zip" | "push"
    ) {
        EventKind::DataAccess
    } else if is_privilege_change(family, verb) {
        EventKind::PrivilegeChange
    } else {
        EventKind::Other
    }
}

fn is_privilege_change(family: &str, verb: &str) -> bool {
    matches!(
        family,
        "protected_branch"
            | "repository_ruleset"
            | "business"
            | "enterprise"
            | "integration_installation"
            | "public_key"
            | "deploy_key"
    ) || family.starts_with("business_")
        || family.starts_with("ip_allow_list")
        || family.ends_with("_moderators")
        || ["member", "collaborator", "invite", "permission", "admin"]
            .iter()
            .any(|word| verb.contains(word))
        || ["saml", "two_factor", "oauth_app_restrictions"]
            .iter()
            .any(|word| verb.contains(word))
        || (family == "team" && verb == "add_repository")
        || (family == "repo" && verb == "access")
}
