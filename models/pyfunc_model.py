"""The MLflow pyfunc as code (models-from-code): MLflow runs this file to load the model, never unpickles one."""

from mlflow.models import set_model

from models.packaged import DelayModel

set_model(DelayModel())
