from server import Crons

crons = Crons()
crons.interval("tidy", hours=1, fn="messages:refuse", args={"reason": "hourly"})
