//! What a CloudTrail call was aimed at.
//!
//! The request says it most precisely for the common services, so it is
//! read first; the record's `resources[]` list is the fallback.
//!
//! | call | target |
//! | --- | --- |
//! | `sts:AssumeRole*` | `principal`: the role (`requestParameters.roleArn`) |
//! | `iam:*AccessKey` | `resource`: the key id (`responseElements.accessKey.accessKeyId`), `resource_type` `access_key`, so the graph and attribution learn a created key |
//! | other `iam` calls | `principal`: the user or role named (`userName`, `roleName`; its ARN from the response when created); `resource`: the policy (`policyArn`) or group |
//! | `s3` | `arn:aws:s3:::bucket/key` (`s3_object`), else `arn:aws:s3:::bucket` (`s3_bucket`) |
//! | `secretsmanager` | the secret (`secretId`) |
//! | `lambda` | the function (`functionName`, as an ARN) |
//! | `ssm` | the parameter (`name`, as an ARN) |
//! | `kms` | the key (`keyId`) |
//! | `dynamodb` | the table (`tableName`, as an ARN) |
//! | anything else | the first entry of `resources[]` with an ARN, its type in snake case (`AWS::S3::Object` -> `s3_object`) |
//!
//! `system` is always the account acted in: `aws:{recipientAccountId}`, else
//! the caller's account, else `aws`.

use custody_event::{MAX_ID_LEN, MAX_LABEL_LEN, MAX_TEXT_LEN, Principal, PrincipalKind, Target};

use super::identity::last_segment;
use crate::Fields;
use crate::fields::clip;

/// The target of the call `service:name` in `record`.
pub(crate) fn target(service: &str, name: &str, record: Fields<'_>) -> Target {
    let account = account(record);
    let mut target = Target {
        system: Some(clip(
            &account.map_or_else(|| "aws".to_owned(), |a| format!("aws:{a}")),
            MAX_ID_LEN,
        )),
        ..Target::default()
    };
    let request = |key: &str| {
        record
            .object("requestParameters")
            .and_then(|request| request.str(key))
    };
    let response = |path: &str| {
        record
            .object("responseElements")
            .and_then(|response| response.str(path))
    };
    let region = record.str("awsRegion").unwrap_or_default();
    let account = account.unwrap_or_default();
    let arn_of = |kind: &str, id: &str| {
        if id.starts_with("arn:") {
            id.to_owned()
        } else {
            format!("arn:aws:{service}:{region}:{account}:{kind}{id}")
        }
    };
    let mut resource = |arn: String, kind: &str| {
        target.resource = Some(clip(&arn, MAX_TEXT_LEN));
        target.resource_type = Some(clip(kind, MAX_LABEL_LEN));
    };
    match service {
        "sts" if name.starts_with("AssumeRole") => {
            if let Some(role) = request("roleArn") {
                target.principal = Some(principal(PrincipalKind::Role, role));
            }
        }
        "iam" if name.ends_with("AccessKey") => {
            if let Some(key) = response("accessKey.accessKeyId").or_else(|| request("accessKeyId"))
            {
                resource(key.to_owned(), "access_key");
            }
        }
        "iam" => {
            if let Some(policy) = request("policyArn").or_else(|| response("policy.arn")) {
                resource(policy.to_owned(), "iam_policy");
            } else if let Some(group) = request("groupName") {
                resource(format!("arn:aws:iam::{account}:group/{group}"), "iam_group");
            }
            if let Some(role) = request("roleName") {
                let arn = response("role.arn").map_or_else(
                    || format!("arn:aws:iam::{account}:role/{role}"),
                    str::to_owned,
                );
                target.principal = Some(principal(PrincipalKind::Role, &arn));
            } else if let Some(user) = request("userName") {
                let arn = response("user.arn").map_or_else(
                    || format!("arn:aws:iam::{account}:user/{user}"),
                    str::to_owned,
                );
                target.principal = Some(principal(PrincipalKind::Human, &arn));
            }
        }
        "s3" if request("bucketName").is_some() => {
            let bucket = request("bucketName").unwrap_or_default();
            match request("key") {
                Some(key) => resource(format!("arn:aws:s3:::{bucket}/{key}"), "s3_object"),
                None => resource(format!("arn:aws:s3:::{bucket}"), "s3_bucket"),
            }
        }
        "secretsmanager" if request("secretId").is_some() => {
            let secret = request("secretId").unwrap_or_default();
            resource(secret.to_owned(), "secretsmanager_secret");
        }
        "lambda" if request("functionName").is_some() => {
            let function = request("functionName").unwrap_or_default();
            resource(arn_of("function:", function), "lambda_function");
        }
        "ssm" if request("name").is_some() && name.contains("Parameter") => {
            let parameter = request("name").unwrap_or_default();
            let parameter = parameter.strip_prefix('/').unwrap_or(parameter);
            resource(arn_of("parameter/", parameter), "ssm_parameter");
        }
        "kms" if request("keyId").is_some() => {
            let key = request("keyId").unwrap_or_default();
            resource(arn_of("key/", key), "kms_key");
        }
        "dynamodb" if request("tableName").is_some() => {
            let table = request("tableName").unwrap_or_default();
            resource(arn_of("table/", table), "dynamodb_table");
        }
        _ => {
            if let Some((arn, kind)) = listed_resource(record) {
                resource(arn.to_owned(), &kind);
            }
        }
    }
    target
}

/// The account the call acted in.
pub(crate) fn account(record: Fields<'_>) -> Option<&str> {
    record
        .str("recipientAccountId")
        .or_else(|| record.str("userIdentity.accountId"))
}

/// The first entry of `resources[]` with an ARN, and its type.
fn listed_resource(record: Fields<'_>) -> Option<(&str, String)> {
    record
        .get("resources")?
        .as_array()?
        .iter()
        .filter_map(|entry| {
            let entry = Fields::new(entry.as_object()?);
            let arn = entry.str("ARN")?;
            Some((
                arn,
                entry
                    .str("type")
                    .map_or_else(|| "aws_resource".to_owned(), snake_type),
            ))
        })
        .next()
}

/// `AWS::S3::Object` as `s3_object`.
fn snake_type(kind: &str) -> String {
    let mut parts = kind
        .split("::")
        .filter(|part| !part.eq_ignore_ascii_case("AWS"));
    let service = parts.next().unwrap_or(kind).to_ascii_lowercase();
    let mut out = service;
    for part in parts {
        out.push('_');
        for (i, c) in part.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn principal(kind: PrincipalKind, arn: &str) -> Principal {
    crate::fields::principal(kind, arn, last_segment(arn))
}

#[cfg(test)]
mod tests {
    #[test]
    fn resource_types_are_snake_case() {
        assert_eq!(super::snake_type("AWS::S3::Object"), "s3_object");
        assert_eq!(super::snake_type("AWS::IAM::AccessKey"), "iam_access_key");
        assert_eq!(super::snake_type("AWS::DynamoDB::Table"), "dynamodb_table");
    }
}
