"""Write a grid of augmented training images with their boxes and class names.

    python tools/show_data.py [data=...] [imgsz=640] [augment.mosaic=0.0] [+count=16]

Same config as training (configs/train.yaml): what you see is what the model is fed.
"""
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from detector.data.pipeline import TrainDataset
from detector.data.visualize import save_grid


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    splits = instantiate(cfg.data)
    train = TrainDataset(splits.train, imgsz=cfg.imgsz, seed=cfg.seed, **cfg.augment)
    count = min(int(cfg.get("count", 16)), len(train))
    items = train.__getitems__(list(range(count)))  # one batch, fetched as a DataLoader worker does
    path = save_grid([image for image, _ in items], [target for _, target in items], list(splits.names),
                     f"{HydraConfig.get().runtime.output_dir}/train_batch.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
