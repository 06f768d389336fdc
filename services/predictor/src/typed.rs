//! `kappa.predictor.v1.Predictor`: an event (named values, JSON, or a car reading) in, score and
//! verdict out, read through the schema of the version that scores it.

use std::{pin::Pin, sync::Arc, time::Instant};

use futures::{Stream, StreamExt as _};
use kappa_api::predictor::{
    GetStatusRequest, PredictRequest, PredictResponse, PredictorStatus, predictor_server::Predictor,
};
use kappa_model::schema::{DecodedEvent, FieldValue, PayloadFormat};
use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};

use crate::{error::PredictError, serving::Serving, slot::LoadedModel};

/// Answers in flight per PredictStream; answers keep the order of the requests.
const STREAM_CONCURRENCY: usize = 64;

pub struct Typed(pub Arc<Serving>);

/// A typed request as the predictor uses it. Built by destructuring every field, so a field added
/// to the proto does not compile until it is given a meaning here.
struct Ask {
    model: String,
    event: Event,
    features: std::collections::BTreeMap<String, f64>,
    request_id: String,
}

/// Where the event's values come from (named `features` are applied on top of any of them).
enum Event {
    Json(String),
    Reading(kappa_api::fleet::SensorReading),
    Named,
}

impl From<PredictRequest> for Ask {
    fn from(request: PredictRequest) -> Self {
        let PredictRequest {
            model,
            features,
            reading,
            request_id,
            event_json,
        } = request;
        let event = match (event_json.is_empty(), reading) {
            (false, _) => Event::Json(event_json),
            (true, Some(reading)) => Event::Reading(reading),
            (true, None) => Event::Named,
        };
        Self {
            model,
            event,
            features,
            request_id,
        }
    }
}

/// One input row in the version's feature order, read through its schema from the JSON event,
/// the car reading and the named values (which win), or every problem with it in one error.
fn row(model: &LoadedModel, ask: &Ask) -> Result<Vec<f32>, PredictError> {
    let invalid = |e: String| PredictError::InvalidInput(e);
    let mut event = DecodedEvent::default();
    match &ask.event {
        Event::Json(json) => model
            .decoder
            .decode_into(json.as_bytes(), PayloadFormat::Json, &mut event)
            .map_err(|e| invalid(format!("event_json: {e}")))?,
        Event::Reading(reading) => model
            .decoder
            .decode_into(&reading.encode_to_vec(), PayloadFormat::Protobuf, &mut event)
            .map_err(invalid)?,
        Event::Named => event.values.resize(model.n_features(), FieldValue::Missing),
    }
    for (name, value) in &ask.features {
        if let Some(&column) = model.feature_index.get(name) {
            event.values[column] = FieldValue::Number(*value);
        }
    }
    let mut values = Vec::with_capacity(model.n_features());
    model.decoder.extend_row(&event, &mut values).map_err(|problems| {
        invalid(format!(
            "{}; version {} of {:?} takes {}",
            model.decoder.describe(&problems),
            model.version,
            model.name,
            model.feature_names
        ))
    })?;
    Ok(values)
}

async fn predict_one(serving: &Serving, request: PredictRequest) -> Result<PredictResponse, PredictError> {
    let ask = Ask::from(request);
    let model = serving.admit(&ask.model, "")?;
    let values = row(&model, &ask)?;
    let scored = serving.score(model, values, 1).await?;
    let score = scored.scores[0];
    let response = PredictResponse {
        score: f64::from(score),
        is_anomaly: kappa_model::is_anomalous(score, scored.model.threshold),
        model_name: scored.model.name.clone(),
        model_version: scored.model.version,
        request_id: ask.request_id,
        explanation: crate::explain::contributions(&scored.model, &scored.inputs, &scored.shares, usize::MAX),
    };
    serving.shadow(scored, crate::shadow::Origin::Predict, &response.request_id);
    Ok(response)
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

    async fn get_status(&self, _request: Request<GetStatusRequest>) -> Result<Response<PredictorStatus>, Status> {
        Ok(Response::new(crate::status::status(&self.0)))
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
