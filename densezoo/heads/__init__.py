"""Dense-prediction heads on a backbone's feature maps, and the segmentor that joins the two."""
from densezoo.heads.segmentation import SEG_HEADS, create_seg_head
from densezoo.heads.segmentor import Segmentor, create_segmentor, load_segmentor_state

__all__ = ['SEG_HEADS', 'create_seg_head', 'Segmentor', 'create_segmentor', 'load_segmentor_state']
