use thiserror::Error;
use tonic::Status;

/// Why a prediction was refused. The `From` below is exhaustive: a new variant picks its code.
#[derive(Debug, Error)]
pub enum PredictError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("model {requested:?} is not served here; this predictor serves {served:?}")]
    UnknownModel { requested: String, served: String },
    #[error("version {requested} of {name:?} is not loaded; loaded: {loaded}")]
    UnknownVersion {
        name: String,
        requested: String,
        loaded: String,
    },
    #[error("no version of {0:?} is loaded yet; retry when health reports SERVING")]
    NotLoaded(String),
    #[error("the inference queue is full ({0} waiting); retry with backoff")]
    Overloaded(usize),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the predictor is shutting down")]
    ShuttingDown,
}

impl From<PredictError> for Status {
    fn from(err: PredictError) -> Self {
        let message = err.to_string();
        match err {
            PredictError::InvalidInput(_) => Status::invalid_argument(message),
            PredictError::UnknownModel { .. } | PredictError::UnknownVersion { .. } => Status::not_found(message),
            PredictError::NotLoaded(_) | PredictError::ShuttingDown => Status::unavailable(message),
            PredictError::Overloaded(_) => Status::resource_exhausted(message),
            PredictError::Inference(_) => Status::internal(message),
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
            (PredictError::InvalidInput("x".into()), Code::InvalidArgument),
            (
                PredictError::UnknownModel {
                    requested: "a".into(),
                    served: "b".into(),
                },
                Code::NotFound,
            ),
            (
                PredictError::UnknownVersion {
                    name: "a".into(),
                    requested: "9".into(),
                    loaded: "1".into(),
                },
                Code::NotFound,
            ),
            (PredictError::NotLoaded("a".into()), Code::Unavailable),
            (PredictError::Overloaded(5), Code::ResourceExhausted),
            (PredictError::Inference("boom".into()), Code::Internal),
            (PredictError::ShuttingDown, Code::Unavailable),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message, "the message is the error's own words");
        }
    }
}
