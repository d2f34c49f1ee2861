"""Model references and the registry operations the stages share."""
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def task_values(self) -> dict:
        return {"model_name": self.name, "model_version": str(self.version),
                "model_uri": self.uri, "training_run_id": self.run_id}
