from setuptools import find_packages, setup

setup(
    name="ltap_hf",
    version="0.1.0",
    description="LTAP (Adaptive Pruner for Long-tailed Data, ICML 2025) for the Hugging Face ecosystem",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ltap_hf", "ltap_hf.*"]),
    package_data={"ltap_hf": ["hub/lt_accuracy/*.py"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "datasets>=4.0",
        "accelerate>=1.0",
        "huggingface-hub>=1.0",
        "safetensors>=0.4",
        "evaluate>=0.4",
        "Pillow>=10.0",
        "numpy>=1.24",
        "pyyaml>=6.0",
    ],
    extras_require={
        "test": ["pytest>=8", "scikit-learn>=1.3", "matplotlib>=3.7", "torch-pruning>=1.6"],
        "demo": ["scikit-learn>=1.3", "matplotlib>=3.7"],
        # channel groups of backbones other than the ResNets, traced by Torch-Pruning's dependency graph
        "channel": ["torch-pruning>=1.6"],
    },
)
