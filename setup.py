"""Packaging for the live ML platform. Dependencies are pinned in constraints.txt; see the Makefile."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="liveml",
    version="0.1.0",
    description="Live machine learning on Flink, Kafka, Iceberg, TFX and TF Serving",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["liveml", "liveml.*", "flink_jobs", "flink_jobs.*", "iceberg_schemas",
                                    "iceberg_schemas.*", "tfx_pipeline", "tfx_pipeline.*", "serving",
                                    "serving.*"]),
    install_requires=[
        line.strip() for line in (HERE / "requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ],
    entry_points={"console_scripts": ["liveml=liveml.cli:main"]},
)
