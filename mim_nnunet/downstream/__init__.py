"""The MiM paper's downstream segmentation datasets (Table 2) through stock nnU-Net: converters to nnU-Net raw
datasets, the splits of the literature and label fractions, and the paper's fine-tuning recipes as data."""
