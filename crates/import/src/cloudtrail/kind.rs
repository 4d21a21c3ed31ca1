//! What sort of action a CloudTrail record is: the rule table.
//!
//! The first rule that matches decides, in this order:
//!
//! | rule | kind |
//! | --- | --- |
//! | the `signin` service, `eventType` `AwsConsoleSignIn`, Identity Center's `Authenticate` / `CreateToken` | `authentication` |
//! | `sts:AssumeRole*`, `sts:GetSessionToken`, `sts:GetFederationToken` | `credential_use` |
//! | a write in `iam`, `sso` or `identitystore`; a write anywhere whose name says `Policy`, `Permission`, `Grant` or ends in `Acl` | `privilege_change` |
//! | a data event (`eventCategory` `Data`), S3 object and DynamoDB item calls, `lambda:Invoke*`, KMS `Decrypt` / `Encrypt` / `GenerateDataKey*` / `ReEncrypt*`, and every read (`readOnly`, or a `Get` / `List` / `Describe` / `Head` / `BatchGet` / `Query` / `Scan` / `Select` / `Lookup` / `Search` / `Simulate` / `Generate` call) | `data_access` |
//! | anything else | `other` |
//!
//! Reads such as `secretsmanager:GetSecretValue` and `ssm:GetParameter` are
//! `data_access` by the read rule.

use custody_event::EventKind;

use crate::Fields;

/// The kind of the action `service:name` recorded in `record`.
pub(crate) fn kind(service: &str, name: &str, record: Fields<'_>) -> EventKind {
    if is_authentication(service, name, record) {
        EventKind::Authentication
    } else if service == "sts"
        && (name.starts_with("AssumeRole")
            || name == "GetSessionToken"
            || name == "GetFederationToken")
    {
        EventKind::CredentialUse
    } else if !is_read(name, record) && is_privilege_change(service, name) {
        EventKind::PrivilegeChange
    } else if is_data(service, name, record) || is_read(name, record) {
        EventKind::DataAccess
    } else {
        EventKind::Other
    }
}

fn is_authentication(service: &str, name: &str, record: Fields<'_>) -> bool {
    service == "signin"
        || name == "ConsoleLogin"
        || record
            .str("eventType")
            .is_some_and(|kind| kind == "AwsConsoleSignIn")
        || (matches!(service, "sso" | "sso-oauth")
            && matches!(name, "Authenticate" | "CreateToken"))
}

fn is_privilege_change(service: &str, name: &str) -> bool {
    matches!(service, "iam" | "sso" | "identitystore")
        || ["Policy", "Permission", "Grant"]
            .iter()
            .any(|word| name.contains(word))
        || name.ends_with("Acl")
}

fn is_data(service: &str, name: &str, record: Fields<'_>) -> bool {
    record
        .str("eventCategory")
        .is_some_and(|category| category.eq_ignore_ascii_case("Data"))
        || (service == "s3" && name.contains("Object"))
        || (service == "dynamodb" && name.contains("Item"))
        || (service == "lambda" && name.starts_with("Invoke"))
        || (service == "kms"
            && ["Decrypt", "Encrypt", "GenerateDataKey", "ReEncrypt"]
                .iter()
                .any(|prefix| name.starts_with(prefix)))
}

/// Whether the call only reads: CloudTrail says so (`readOnly`), or its name
/// does.
fn is_read(name: &str, record: Fields<'_>) -> bool {
    record.bool("readOnly").unwrap_or(false)
        || [
            "Get", "List", "Describe", "Head", "BatchGet", "Query", "Scan", "Select", "Lookup",
            "Search", "Simulate", "Generate",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}
