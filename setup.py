from setuptools import setup

setup(
    name="ecdp",
    version="0.1.0",
    description="ECDP: conditional diffusion super-resolution with probability-flow sampling",
    python_requires=">=3.10",
    packages=["ecdp", "ecdp.commands", "ecdp.kernels", "ecdp.export"],
    package_dir={"ecdp": "ecdp", "ecdp.commands": "ecdp/commands", "ecdp.kernels": "kernels", "ecdp.export": "export"},
    package_data={"ecdp": ["weights/default/*"]},
    install_requires=[
        "torch>=2.4",
        "torchdiffeq>=0.2.4",
        "safetensors>=0.4",
        "numpy",
        "pillow",
        "tqdm",
        "pyyaml",
        "scikit-image",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "scikit-image", "onnx", "onnxruntime", "onnxscript", "triton"],
        "export": ["onnx", "onnxruntime", "onnxscript"],
        "gpu": ["triton"],
    },
    entry_points={
        "console_scripts": [
            "ecdp=ecdp.cli:main",
            "ecdp-export=ecdp.export.cli:main",
        ]
    },
)
