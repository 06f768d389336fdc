"""An MLServer custom runtime that serves an ONNX graph with ONNX Runtime, for `make bench`'s
comparison with kappa-predictor serving the same graph (MLServer 1.7.1 ships no ONNX runtime of
its own). One session a model, one intra-op and one inter-op thread, as the predictor runs a
graph on one inference thread a batch; every output of the graph is returned.

Model settings: parameters.uri is the `.onnx` file.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        values = self.session.run(None, {self.input_name: rows})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, np.asarray(v)) for name, v in zip(self.output_names, values)],
        )
