//! End-to-end tests: the real Kafka broker (`make kafka-up`, or `make test` which starts it), the
//! real binaries started as processes, and real gRPC clients. Every test uses its own topics and
//! transactional ids, so tests run in parallel and leave nothing behind that another test reads.

mod backtest;
mod bridge;
mod cluster;
mod console;
mod cutover;
mod demo;
mod explain;
mod fleet;
mod forged_log;
mod metrics;
mod monitoring;
mod onnx;
mod outage;
mod poison;
mod predictor;
mod registry;
mod scan;
mod schema;
mod security;
mod shadow;
mod supervision;
mod support;
mod tiered;
mod tracing;
mod trainer;
