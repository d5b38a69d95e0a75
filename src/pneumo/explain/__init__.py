"""Heat maps: occlusion sensitivity and class activation maps, and one image analysed with its map."""
