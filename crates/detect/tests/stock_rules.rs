//! Rules written as SigmaHQ writes them for Okta and GitHub (lower-case
//! `eventtype` and `displaymessage` for Okta, the audit log's own fields
//! for GitHub) run unchanged against records imported by Custody's
//! importers, and group-by on chain keys works beside them.

use chrono::Utc;
use custody_detect::{RuleFile, RuleSet, Sigma, SigmaConfig};
use custody_engine::Detect;
use custody_event::{EventId, RuntimeEvent};

fn fixture(path: &str) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../import/tests/fixtures");
    std::fs::read(root.join(path)).unwrap()
}

fn imported<S: custody_import::Source>(source: &S, bytes: &[u8]) -> Vec<RuntimeEvent> {
    custody_import::import(source, bytes, Utc::now())
        .into_iter()
        .map(|imported| imported.unwrap().1.into_event(Utc::now(), EventId::new_v7))
        .collect()
}

fn stage(text: &str) -> Sigma {
    let set = RuleSet::load(&[RuleFile {
        name: "stock.yml".into(),
        text: text.into(),
    }])
    .unwrap_or_else(|errors| panic!("{errors:?}"));
    Sigma::new(&set, SigmaConfig::default()).unwrap()
}

fn fired(sigma: &Sigma, events: &[RuntimeEvent]) -> Vec<String> {
    events
        .iter()
        .flat_map(|event| sigma.detect(event))
        .map(|signal| signal.id)
        .collect()
}

#[test]
fn an_okta_rule_in_sigmahq_form() {
    // The shape of SigmaHQ's rules/identity/okta/ rules.
    let sigma = stage(
        "title: Okta Admin Role Assigned to an User or Group
id: okta-admin-role
status: test
logsource:
    product: okta
    service: okta
detection:
    selection:
        eventtype:
            - group.privilege.grant
            - user.account.privilege.grant
    condition: selection
level: medium
---
title: Okta Session Message
id: okta-message
logsource:
    product: okta
    service: okta
detection:
    selection:
        displaymessage|contains: privilege
    condition: selection
level: low
",
    );
    let grant = imported(&custody_import::Okta, &fixture("okta/privilege-grant.json"));
    assert_eq!(fired(&sigma, &grant), ["okta-admin-role", "okta-message"]);
    let session = imported(&custody_import::Okta, &fixture("okta/session-start.json"));
    assert!(fired(&sigma, &session).is_empty());
}

#[test]
fn a_github_rule_in_sigmahq_form() {
    let sigma = stage(
        "title: GitHub New Org Member Added
id: github-member
logsource:
    product: github
    service: audit
detection:
    selection:
        action: 'org.add_member'
    condition: selection
level: informational
---
title: GitHub Repository Cloned By Actor
id: github-clone
logsource:
    product: github
    service: audit
detection:
    selection:
        action: 'git.clone'
        actor|exists: true
    condition: selection
level: low
",
    );
    let page = imported(&custody_import::GitHub, &fixture("github/audit-page.json"));
    assert_eq!(page.len(), 3);
    assert_eq!(fired(&sigma, &page), ["github-clone", "github-member"]);
}

#[test]
fn a_cloudtrail_rule_reads_custody_fields_too() {
    // A native rule may also use the Custody face, under `custody.`.
    let sigma = stage(
        "title: Key created, by the importer's reading
id: key-created
logsource:
    product: aws
    service: cloudtrail
detection:
    selection:
        eventName: CreateAccessKey
        custody.kind: privilege_change
    condition: selection
",
    );
    let created = imported(
        &custody_import::CloudTrail,
        &fixture("cloudtrail/create-access-key.json"),
    );
    assert_eq!(fired(&sigma, &created), ["key-created"]);
}
