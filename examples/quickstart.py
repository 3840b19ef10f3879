from ai_distributed_training import DistributedTraining, GPUAcceleratedTraining

model = {"model_name": "NeuralNet_Model"}
data = {"samples": 100000, "features": 128}
distributed_training = DistributedTraining()
trained_model = distributed_training.train_distributed(model, data, nodes=3)
print(f"Distributed Training Result: {trained_model}")
