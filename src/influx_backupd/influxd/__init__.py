"""The server: locate, stop, start, ping; the backup tool; InfluxQL; throwaway servers."""
