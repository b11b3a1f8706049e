"""The Productstatus index: products, instances, files and the event log.

``write.py`` applies index changes inside the database task's transaction;
``queries.py`` answers the consumers' questions; ``events.py`` follows the
event log for subscribers and keeps the API's cache of hot answers current;
``params.py`` checks API objects; ``expiry.py`` is the expiry task.
"""
