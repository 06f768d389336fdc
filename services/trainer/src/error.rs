use thiserror::Error;
use tonic::Status;

/// Why a training request was refused. Exhaustive `From`: a new variant picks its code.
#[derive(Debug, Error)]
pub enum TrainerError {
    #[error("invalid training spec: {0}")]
    InvalidSpec(String),
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error(
        "topic {0:?} does not exist: no predictor with this --monitoring-topic has started, or they write to another"
    )]
    UnknownMonitoringTopic(String),
    #[error("job {0:?} does not exist")]
    UnknownJob(String),
    #[error("{0} jobs are running already; retry when one finishes")]
    Busy(usize),
    #[error("{0} monitoring watches are open already; close one or retry later")]
    TooManyWatches(usize),
    #[error("Kafka is unavailable: {0}; retry once the broker is reachable")]
    Kafka(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TruncatedRange(String),
    /// The registry refused or failed a call made for the request: its code is passed on.
    #[error("{context}: {}", status.message())]
    Registry { context: String, status: Status },
}

impl From<TrainerError> for Status {
    fn from(err: TrainerError) -> Self {
        let message = err.to_string();
        match err {
            TrainerError::InvalidSpec(_) => Status::invalid_argument(message),
            TrainerError::UnknownTopic(_) | TrainerError::UnknownMonitoringTopic(_) | TrainerError::UnknownJob(_) => {
                Status::not_found(message)
            }
            TrainerError::Busy(_) | TrainerError::TooManyWatches(_) => Status::resource_exhausted(message),
            TrainerError::Kafka(_) => Status::unavailable(message),
            TrainerError::Forbidden(_) => Status::permission_denied(message),
            TrainerError::TruncatedRange(_) => Status::failed_precondition(message),
            TrainerError::Registry { status, .. } => Status::new(status.code(), message),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn every_refusal_has_the_code_a_client_can_act_on() {
        let cases = [
            (TrainerError::InvalidSpec("x".into()), Code::InvalidArgument),
            (TrainerError::UnknownTopic("t".into()), Code::NotFound),
            (TrainerError::UnknownJob("j".into()), Code::NotFound),
            (TrainerError::UnknownMonitoringTopic("m".into()), Code::NotFound),
            (TrainerError::Busy(2), Code::ResourceExhausted),
            (TrainerError::TooManyWatches(16), Code::ResourceExhausted),
            (TrainerError::Kafka("down".into()), Code::Unavailable),
            (TrainerError::Forbidden("no".into()), Code::PermissionDenied),
            (TrainerError::TruncatedRange("gone".into()), Code::FailedPrecondition),
            (
                TrainerError::Registry {
                    context: "fetching m version 9".into(),
                    status: Status::not_found("no version 9"),
                },
                Code::NotFound,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
    }
}
