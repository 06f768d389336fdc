//! Generated protobuf and gRPC code for every Kappa API, plus the encoded file descriptor set
//! that each server registers with gRPC reflection. Only generated code and the few conversions
//! that every crate needs live here; domain logic stays in the crates that own it.

// `allow`, not `expect`: whether generated code trips these lints changes with prost versions.
#![allow(
    clippy::all,
    unused_qualifications,
    reason = "generated code follows prost's and pbjson's style, not ours"
)]

pub mod kappa {
    pub mod model {
        pub mod v1 {
            tonic::include_proto!("kappa.model.v1");
            include!(concat!(env!("OUT_DIR"), "/kappa.model.v1.serde.rs"));
        }
    }
    pub mod registry {
        pub mod v1 {
            tonic::include_proto!("kappa.registry.v1");
            include!(concat!(env!("OUT_DIR"), "/kappa.registry.v1.serde.rs"));

            /// Metadata of a publish refused with ABORTED for its version number: the number
            /// to sign the manifest for instead.
            pub const NEXT_VERSION_METADATA: &str = "kappa-next-version";
        }
    }
    pub mod trainer {
        pub mod v1 {
            tonic::include_proto!("kappa.trainer.v1");
            include!(concat!(env!("OUT_DIR"), "/kappa.trainer.v1.serde.rs"));
        }
    }
    pub mod predictor {
        pub mod v1 {
            tonic::include_proto!("kappa.predictor.v1");
            include!(concat!(env!("OUT_DIR"), "/kappa.predictor.v1.serde.rs"));
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("kappa.events.v1");
            include!(concat!(env!("OUT_DIR"), "/kappa.events.v1.serde.rs"));
        }
    }
    /// The worked example's records, outside the core packages.
    pub mod fleet {
        pub mod v1 {
            tonic::include_proto!("kappa.fleet.v1");
            include!(concat!(env!("OUT_DIR"), "/kappa.fleet.v1.serde.rs"));
        }
    }
}

/// The Open Inference Protocol (KServe v2), package `inference`.
pub mod inference {
    tonic::include_proto!("inference");
}

pub use kappa::events::v1 as events;
pub use kappa::fleet::v1 as fleet;
pub use kappa::model::v1 as model;
pub use kappa::predictor::v1 as predictor;
pub use kappa::registry::v1 as registry;
pub use kappa::trainer::v1 as trainer;

/// Encoded `FileDescriptorSet` of every Kappa proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kappa_descriptor.bin"));

/// Server reflection for one Kappa server.
pub mod reflection {
    use tonic_reflection::server::{
        Error, v1::ServerReflectionServer as V1, v1alpha::ServerReflectionServer as V1Alpha,
    };

    /// Reflection services (v1, and v1alpha for older grpcurl and Postman) that advertise exactly
    /// `services` plus grpc.health.v1 and reflection itself, not every service in Kappa's protos.
    pub fn for_services(
        services: &[&str],
    ) -> Result<
        (
            V1<impl tonic_reflection::server::v1::ServerReflection>,
            V1Alpha<impl tonic_reflection::server::v1alpha::ServerReflection>,
        ),
        Error,
    > {
        let builder = || {
            let mut b = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection");
            for s in services {
                b = b.with_service_name(*s);
            }
            b
        };
        Ok((builder().build_v1()?, builder().build_v1alpha()?))
    }
}

/// One RPC of Kappa's protos, as the descriptor set declares it.
struct Method {
    /// `package.Service`.
    service: String,
    /// `/package.Service/Method`.
    path: String,
    streaming: bool,
}

/// Every RPC in the descriptor set.
fn methods() -> Vec<Method> {
    use prost::Message as _;
    let set =
        prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the build wrote a valid descriptor set");
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                methods.push(Method {
                    path: format!("/{full}/{}", method.name()),
                    service: full.clone(),
                    streaming: method.client_streaming() || method.server_streaming(),
                });
            }
        }
    }
    methods
}

/// The gRPC paths (`/package.Service/Method`) of every method of `service` (a full name such as
/// `kappa.registry.v1.Registry`): what an access policy must cover.
pub fn method_paths(service: &str) -> Vec<String> {
    methods()
        .into_iter()
        .filter(|m| m.service == service)
        .map(|m| m.path)
        .collect()
}

/// The gRPC paths of every streaming method (client, server or both) in Kappa's protos: what a
/// per-call deadline must leave alone (a watch lasts as long as its caller wants; a publish has
/// its own idle limit).
pub fn streaming_paths() -> Vec<String> {
    methods().into_iter().filter(|m| m.streaming).map(|m| m.path).collect()
}

/// A generated gRPC server whose largest accepted request message can be set. The runtime host
/// sets it on every service it serves, from the one `--max-message-bytes` flag, so no service
/// can forget it.
pub trait MessageLimit {
    /// The server, refusing request messages over `bytes` with RESOURCE_EXHAUSTED before they
    /// are buffered whole.
    fn with_message_limit(self, bytes: usize) -> Self;
}

macro_rules! message_limit {
    ($($server:ident :: $type:ident),* $(,)?) => {$(
        impl<T> MessageLimit for $server::$type<T> {
            fn with_message_limit(self, bytes: usize) -> Self {
                self.max_decoding_message_size(bytes)
            }
        }
    )*};
}

use inference::grpc_inference_service_server;
use predictor::predictor_server;
use registry::registry_server;
use trainer::trainer_server;

message_limit!(
    registry_server::RegistryServer,
    predictor_server::PredictorServer,
    trainer_server::TrainerServer,
    grpc_inference_service_server::GrpcInferenceServiceServer,
);
