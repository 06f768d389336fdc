//! `kappa.predictor.v1.Predictor`: named sensor fields in, score and verdict out.

use std::{pin::Pin, sync::Arc, time::Instant};

use futures::{Stream, StreamExt as _};
use kappa_api::{
    predictor::{PredictRequest, PredictResponse, predictor_server::Predictor},
    telemetry::SensorReading,
};
use tonic::{Request, Response, Status, Streaming};

use crate::{error::PredictError, serving::Serving, slot::LoadedModel};

/// Answers in flight per PredictStream; answers keep the order of the requests.
const STREAM_CONCURRENCY: usize = 64;

pub struct Typed(pub Arc<Serving>);

/// The reading's fields by name, in the same names the JSON events use.
fn reading_field(reading: &SensorReading, name: &str) -> Option<f64> {
    Some(match name {
        "coolant_temp" => reading.coolant_temp,
        "intake_air_temp" => reading.intake_air_temp,
        "intake_air_flow_speed" => reading.intake_air_flow_speed,
        "battery_percentage" => reading.battery_percentage,
        "battery_voltage" => reading.battery_voltage,
        "current_draw" => reading.current_draw,
        "speed" => reading.speed,
        "engine_vibration_amplitude" => reading.engine_vibration_amplitude,
        "throttle_pos" => reading.throttle_pos,
        "tire_pressure_1_1" => reading.tire_pressure_1_1,
        "tire_pressure_1_2" => reading.tire_pressure_1_2,
        "tire_pressure_2_1" => reading.tire_pressure_2_1,
        "tire_pressure_2_2" => reading.tire_pressure_2_2,
        "accelerometer_1_1_value" => reading.accelerometer_1_1_value,
        "accelerometer_1_2_value" => reading.accelerometer_1_2_value,
        "accelerometer_2_1_value" => reading.accelerometer_2_1_value,
        "accelerometer_2_2_value" => reading.accelerometer_2_2_value,
        "control_unit_firmware" => reading.control_unit_firmware,
        _ => return None,
    })
}

/// One input row in the model's feature order, from named features or a whole reading.
fn row(model: &LoadedModel, request: &PredictRequest) -> Result<Vec<f32>, PredictError> {
    if let Some(unknown) = request.features.keys().find(|k| !model.feature_index.contains_key(*k)) {
        return Err(PredictError::InvalidInput(format!(
            "unknown feature {unknown:?}; this model takes {}",
            model.feature_names
        )));
    }
    model
        .manifest
        .features
        .iter()
        .map(|f| {
            let value = match (&request.reading, request.features.get(&f.name)) {
                (_, Some(v)) => Some(*v),
                (Some(reading), None) => reading_field(reading, &f.name),
                (None, None) => None,
            };
            value.map(|v| v as f32).ok_or_else(|| {
                PredictError::InvalidInput(format!(
                    "feature {:?} is missing; this model takes {}",
                    f.name, model.feature_names
                ))
            })
        })
        .collect()
}

async fn predict_one(serving: &Serving, request: PredictRequest) -> Result<PredictResponse, PredictError> {
    let model = serving.admit(&request.model, "")?;
    let values = row(&model, &request)?;
    let scored = serving.score(model, values, 1).await?;
    let score = scored.scores[0];
    Ok(PredictResponse {
        request_id: request.request_id,
        score: f64::from(score),
        is_anomaly: score > scored.model.threshold,
        model_name: scored.model.name.clone(),
        model_version: scored.model.version,
    })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PredictResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Predictor for Typed {
    async fn predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictResponse>, Status> {
        let started = Instant::now();
        let result = predict_one(&self.0, request.into_inner()).await.map_err(Status::from);
        self.0.observe("Predict", &result, Some(started));
        result.map(Response::new)
    }

    type PredictStreamStream = ResponseStream;

    async fn predict_stream(
        &self,
        request: Request<Streaming<PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        let serving = Arc::clone(&self.0);
        let answers = request
            .into_inner()
            .map(move |message| {
                let serving = Arc::clone(&serving);
                async move {
                    let started = Instant::now();
                    let result = match message {
                        Ok(request) => predict_one(&serving, request).await.map_err(Status::from),
                        Err(status) => Err(status),
                    };
                    serving.observe("PredictStream", &result, Some(started));
                    result
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(answers)))
    }
}
