"""Teacher-student distillation with your own training step: a teacher trained first, then
frozen, and a small student trained to match its softened predictions and the labels. Only the
student is optimised. Data: scikit-learn's bundled handwritten digits."""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from ai_distributed_training import DistributedTraining

digits = load_digits()
X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target)
trainer = DistributedTraining(nodes=2, runs_dir=None, learning_rate=3e-3, batch_size=64)


def teacher_net():
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def student_net():
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


teacher = trainer.train_distributed(teacher_net, (X, y), epochs=6).model
teacher.requires_grad_(False)  # frozen: the strategy leaves it unwrapped, nothing is synced


def distill(ctx, batch, temperature=2.0):
    """KL to the teacher's softened predictions, plus cross-entropy to the labels."""
    x, labels = batch
    with torch.no_grad():
        soft_targets = F.softmax(ctx.models["teacher"](x) / temperature, dim=1)
    logits = ctx.models["student"](x)
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft_targets, reduction="batchmean")
    loss = soft * temperature**2 + F.cross_entropy(logits, labels)
    ctx.backward(loss)
    ctx.step("student")
    accuracy = (logits.argmax(1) == labels).float().mean()
    return {"loss": loss, "accuracy": accuracy}


result = trainer.train_distributed(
    {"teacher": teacher, "student": student_net},
    (X, y),
    train_step=distill,
    epochs=10,
)
student = result.model["student"]
accuracy = np.mean((student(X).argmax(1) == y).numpy())
print(f"student accuracy on all digits: {accuracy:.3f}")
print(f"train accuracy {result['metrics']['train_accuracy']:.3f}, loss {result['final_loss']:.3f}")
