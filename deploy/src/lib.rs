//! Deployment tooling for AWS: `datamailer smoke` ([`smoke`]), the offline
//! `datamailer validate-infra` checks of the CloudFormation template ([`validate`]) and the
//! dashboards' one source ([`dashboards`]: Grafana and the template's CloudWatch dashboard).

pub mod dashboards;
pub mod smoke;
pub mod validate;
