"""Pure, incremental, event-time hazard detectors.

Arrays in, detections out: nothing here imports Kafka, touches files or reads the clock.
Every detector keeps its streaming state in the object, so feeding a record in packets of
any size gives the same detections as feeding it whole.
"""

from detectors.base import Detection, DetectorError, StationInfo, StreamDetector

__all__ = ["Detection", "DetectorError", "StationInfo", "StreamDetector"]
