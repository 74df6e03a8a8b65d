"""What one `textserve score` invocation asks for: inputs, output, model or server, and its settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.scoring.shards import OutputPaths


@dataclass(frozen=True)
class ScoreJob:
    """One `textserve score` invocation: inputs, output and model; settings in `config`.

    Attributes:
      inputs: files, directories (class-folder layout, or a folder of files) or globs.
      output: output path; its format suffix, if any, is stripped to name the
        shards, the errors file and the summary.
      config: the resolved config; `[data]` says how to read, `[score]` how to score.
      model: export directory or version directory (in-process scoring).
      server: `grpc://HOST:PORT` or `http://HOST:PORT` to score through a server instead.
      model_name: the served model's name (with `server`).
      resume: skip shards completed by an earlier run of the same job.
      overwrite: replace existing outputs of an earlier job.
      progress: show a progress bar (None = when stderr is a terminal).

    Raises:
      ValueError: options that cannot work together.
    """

    inputs: tuple[str, ...]
    output: str
    config: PipelineConfig = field(default_factory=PipelineConfig)
    model: str = ""
    server: str = ""
    model_name: str = ""
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None

    def __post_init__(self):
        if not self.inputs:
            raise ValueError("`inputs` must name at least one file, directory or glob, received none.")
        if bool(self.model) == bool(self.server):
            raise ValueError(
                f"give exactly one of --model (score in-process) or --server (score through a running "
                f"server), received model={self.model!r}, server={self.server!r}."
            )
        if self.server and not self.model_name:
            raise ValueError("--server needs --model-name, the name the server serves the model under.")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues an earlier job and --overwrite replaces it; give one.")

    def paths(self) -> OutputPaths:
        """Where this job's files go."""
        score = self.config.score
        return OutputPaths.for_output(self.output, score.output_format, score.num_shards)

    def resume_options(self) -> dict:
        """The settings a `--resume` must share with the run it continues (they change output bytes)."""
        score = self.config.score
        return {
            "output": self.output,
            "server": self.server,
            "model_name": self.model_name,
            "data": dataclasses.asdict(self.config.data),
            "score": {
                "output_format": score.output_format,
                "num_shards": score.num_shards,
                "probabilities": score.probabilities,
            },
        }

    def settings(self) -> dict[str, dict[str, Any]]:
        """The resolved [data] and [score] sections, as saved with the outputs."""
        every = self.config.to_dict()
        return {"data": every["data"], "score": every["score"]}
