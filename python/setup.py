"""Generates the gRPC and protobuf modules from the repository's proto/ when the package is built,
so the stubs always match the services (they are never committed)."""

import pathlib

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
]


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
        # Each generated directory a package, so `kappa.registry.v1.registry_pb2` imports.
        for f in FILES:
            package = out / pathlib.Path(f).parent
            while package != out:
                (package / "__init__.py").touch()
                package = package.parent
        # Found before the stubs existed: look again so the generated packages are built too.
        self.packages = find_packages(str(HERE), include=["kappa", "kappa.*"])
        super().run()


setup(cmdclass={"build_py": GenerateStubs})
