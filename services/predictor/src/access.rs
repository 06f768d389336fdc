//! Which role each predictor call needs (the auth layer's policy). ServerLive and ServerReady
//! are the Open Inference Protocol's probes and stay open, like grpc.health.v1.

use kappa_runtime::auth::{Access, Role};

pub fn access(path: &str) -> Access {
    match path {
        "/inference.GRPCInferenceService/ServerLive" | "/inference.GRPCInferenceService/ServerReady" => Access::Open,
        "/inference.GRPCInferenceService/ModelReady"
        | "/inference.GRPCInferenceService/ServerMetadata"
        | "/inference.GRPCInferenceService/ModelMetadata"
        | "/kappa.predictor.v1.Predictor/GetStatus" => Access::Needs(Role::Read),
        "/inference.GRPCInferenceService/ModelInfer"
        | "/kappa.predictor.v1.Predictor/Predict"
        | "/kappa.predictor.v1.Predictor/PredictStream" => Access::Needs(Role::Infer),
        _ => Access::Unlisted,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_predictor_method_has_a_rule() {
        let mut paths = kappa_api::method_paths("inference.GRPCInferenceService");
        paths.extend(kappa_api::method_paths("kappa.predictor.v1.Predictor"));
        assert_eq!(paths.len(), 9, "{paths:?}");
        for path in paths {
            assert_ne!(super::access(&path), kappa_runtime::auth::Access::Unlisted, "{path}");
        }
    }
}
