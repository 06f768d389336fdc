"""Generates the gRPC and protobuf modules from the repository's proto/ when the package is built,
so the stubs always match the services (they are never committed)."""

import pathlib
import tempfile

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent / "proto"
# The services the package speaks; their imports come along.
FILES = [
    "kappa/model/v1/model.proto",
    "kappa/registry/v1/registry.proto",
    "kappa/fleet/v1/fleet.proto",
    "kappa/predictor/v1/predictor.proto",
    "kappa/trainer/v1/trainer.proto",
    "kappa/events/v1/events.proto",
]
# The Open Inference Protocol's messages, generated under the package's own proto package
# (`kappa.oip.v2`, not `inference`) so they never collide in protobuf's descriptor pool with
# another client's copy (tritonclient registers `inference.*` too). Type names never travel on
# the wire; the calls name the real `inference.GRPCInferenceService` methods.
OIP = (
    "inference/grpc_predict_v2.proto",
    "kappa/oip/v2/oip.proto",
    "package inference;",
    "package kappa.oip.v2;",
)


class GenerateStubs(build_py):
    def run(self) -> None:
        from grpc_tools import protoc

        if not PROTO.is_dir():
            raise SystemExit(
                f"{PROTO} is missing: build the package from a Kappa checkout (pip install ./python)"
            )
        out = HERE
        args = ["protoc", f"-I{PROTO}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
        if protoc.main([*args, *(str(PROTO / f) for f in FILES)]) != 0:
            raise SystemExit("protoc failed to generate the stubs")
        source, renamed, package, ours = OIP
        with tempfile.TemporaryDirectory() as staged:
            copy = pathlib.Path(staged) / renamed
            copy.parent.mkdir(parents=True)
            text = (PROTO / source).read_text()
            if package not in text:
                raise SystemExit(f"{source} no longer declares `{package}`: update setup.py")
            copy.write_text(text.replace(package, ours, 1))
            if (
                protoc.main(["protoc", f"-I{staged}", f"--python_out={out}", f"--pyi_out={out}", str(copy)])
                != 0
            ):
                raise SystemExit("protoc failed to generate the Open Inference Protocol messages")
        # Each generated directory a package, so `kappa.registry.v1.registry_pb2` imports.
        for f in [*FILES, renamed]:
            package = out / pathlib.Path(f).parent
            while package != out:
                (package / "__init__.py").touch()
                package = package.parent
        # Found before the stubs existed: look again so the generated packages are built too.
        self.packages = find_packages(str(HERE), include=["kappa", "kappa.*"])
        super().run()


setup(cmdclass={"build_py": GenerateStubs})
