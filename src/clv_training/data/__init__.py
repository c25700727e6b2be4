"""Loading transaction logs and holding them to the data contract."""

CUSTOMER_ID = "customer_id"
TIMESTAMP = "timestamp"
AMOUNT = "amount"
CANCELLED = "cancelled"
SOURCE_ROW = "source_row"
COLUMNS = (CUSTOMER_ID, TIMESTAMP, AMOUNT)
