//! `explain`: the decision for one flow, with the rule that made it.
use serde::Serialize;

use crate::policy::{ChainNames, Decision, Flow, Policy, RuleSet, decide::decide_with};

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub flow: Flow,
    pub decision: Decision,
}

pub fn explain(policy: &Policy, flow: Flow, names: &ChainNames) -> Explanation {
    let rules = RuleSet::build(policy, flow.family());
    let decision = decide_with(policy, &rules, names, &flow);
    Explanation { flow, decision }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::policy::Verdict::*;
        let d = &self.decision;
        let verdict = match d.verdict {
            RedirectOutbound { port } => format!("REDIRECT to the outbound listener 127.0.0.1:{port}"),
            RedirectInbound { port } => format!("REDIRECT to the inbound listener :{port}"),
            DnatPodIp { port } => format!("DNAT to the pod IP, port {port}"),
            DnatDnsProxy { to } => format!("DNAT to the sidecar's local DNS proxy {to}"),
            Pass => "PASS (not intercepted)".to_string(),
        };
        writeln!(f, "decision: {verdict}")?;
        match (&d.reason, &d.rule) {
            (Some(reason), Some(rule)) => writeln!(f, "reason:   {}\nrule:     {rule}", reason.name())?,
            (Some(reason), None) => writeln!(f, "reason:   {} (the nat table never sees this flow)", reason.name())?,
            _ => writeln!(f, "reason:   no rule matches (only TCP, and UDP to the local DNS proxy, are intercepted)")?,
        }
        if !d.path.is_empty() {
            writeln!(f, "path:")?;
            for rule in &d.path {
                writeln!(f, "  {rule}")?;
            }
        }
        Ok(())
    }
}
