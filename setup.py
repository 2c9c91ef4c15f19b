from setuptools import find_packages, setup

HF = ["transformers==5.23.0", "torch==2.13.0"]
INFER = [
    # CPU build from PyPI; the GPU build is installed from Paddle's own index (docs/install.md).
    "paddlepaddle==3.3.1",
    "paddlex==3.7.2",
    "paddleocr[doc-parser]==3.7.0",
    "python-docx==1.2.0",  # paddleocr doc_parser --save_path needs it; [doc-parser] does not pull it
    "safetensors==0.8.0",
    "opencv-python-headless==5.0.0.93",
]

SERVE = [
    "fastapi==0.163.2",
    "uvicorn==0.54.0",
    "python-multipart==0.0.34",  # multipart uploads (FastAPI's form parser)
    "prometheus-client==0.26.0",
]
# The test suite drives the server with the official openai client and the playground with
# Playwright on Debian's chromium (no browser download: executable_path=/usr/bin/chromium).
SERVE_TEST = ["openai==3.57.0", "playwright==1.65.2"]

setup(
    name="paddle-ocrvl-sft",
    version="0.1.0",
    description="From a folder of domain documents to a fine-tuned PaddleOCR-VL (0.9B, 1.5 or 1.6; ERNIEKit OCR-VL-SFT or PaddleFormers)",
    python_requires=">=3.10",
    # configs/ and patches/ live at the top level of the repo and ship inside the package
    # as paddle_ocrvl_sft/_configs and _patches (paddle_ocrvl_sft.data_dir finds either)
    packages=[*find_packages(include=["paddle_ocrvl_sft", "paddle_ocrvl_sft.*"]), "paddle_ocrvl_sft._configs", "paddle_ocrvl_sft._patches"],
    package_dir={"paddle_ocrvl_sft._configs": "configs", "paddle_ocrvl_sft._patches": "patches"},
    package_data={
        "paddle_ocrvl_sft": ["resources/*/*", "backends/requirements/*", "serve/static/*", "ui/static/*"],
        "paddle_ocrvl_sft._configs": ["*.yaml"],
        "paddle_ocrvl_sft._patches": ["*.json"],
    },
    install_requires=[
        "numpy>=1.26",
        "PyYAML>=6.0",
        "Pillow>=10.0",
        "imagesize==2.0.1",  # image size from the header, no decode
        "json_repair==0.64.5",
        "sentencepiece==0.2.3",
        "tqdm>=4.66",
        "protobuf>=4.25",  # testing.py edits the SentencePiece model proto (tiny tokenizer fixture)
        "matplotlib>=3.8",
        "uv==0.13.9",  # builds the trainers' pinned environments in seconds (`backend install`; venv + pip without it)
        # eval: edit distances, list-item assignment, tree edit distance for TEDS
        "rapidfuzz==3.14.6",
        "scipy==1.17.1",
        "apted==1.0.3",
    ],
    extras_require={
        "infer": INFER,
        "hf": HF,
        "serve": SERVE,
        "test": ["pytest==9.0.3", "hypothesis==6.155.2", *HF, *SERVE, *SERVE_TEST],
        "all": [*INFER, *HF, *SERVE, *SERVE_TEST, "pytest==9.0.3", "hypothesis==6.155.2"],
    },
    entry_points={"console_scripts": ["paddle-ocrvl-sft = paddle_ocrvl_sft.cli:main"]},
)
