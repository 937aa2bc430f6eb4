//! Deployment tooling for AWS: `datamailer smoke` ([`smoke`]) and the offline
//! `datamailer validate-infra` checks of the CloudFormation template ([`validate`]).

pub mod smoke;
pub mod validate;
