"""iSync's own request and response examples, verbatim from its API document (the e-mail addresses carry the
document's no-break space), shared by the wire-format and server tests."""

SEED_PHP_CATALOGUE_CRITERIA = '<ProductStockCatalogueQueryCriteria xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><AddedDate>2016-06-01T00:00:00</AddedDate></ProductStockCatalogueQueryCriteria>'  # noqa: E501

SEED_CATALOGUE_CRITERIA = """<ProductStockCatalogueQueryCriteria xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">

<AddedDate>2016-01-01T00:00:00</AddedDate>

</ProductStockCatalogueQueryCriteria>"""  # noqa: E501

SEED_WEB_SALES_ORDER = """<WebSalesOrder xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">

<Comments/>

<DeliveryDetail>

<AddressLine1>10 Downing Street</AddressLine1>

<AddressLine2>Westminster</AddressLine2>

<AltNumber>08358798897</AltNumber>

<City>London</City>

<Company/>

<Country>England</Country>

<Email>[email\xa0protected]</Email>

<FullName>John Doe</FullName>

<Mobile>08358798897</Mobile>

<Phone>08358798897</Phone>

<PostCode>0007</PostCode>

<Province>-</Province>

</DeliveryDetail>

<IsGift>false</IsGift>

<LineItems>

<WebSalesOrderDetail>

<CNTypeID>0</CNTypeID>

<Discount>0.00</Discount>

<ExRate>1</ExRate>

<SellingPrice>200</SellingPrice>

<StatusID>3</StatusID>

<ThirdPartyBarcode>ABSCLS2110_00000000000621</ThirdPartyBarcode>

<Units>1</Units>

</WebSalesOrderDetail>

</LineItems>

<PONumber>1000124</PONumber>

<PaymentMethodID>0</PaymentMethodID>

<PrintInvoice>true</PrintInvoice>

<RequiredDate>2014-04-09T17:38:42</RequiredDate>

<SpecialInstructions/>

<StatusID>3</StatusID>

<TrackNo>A1567516</TrackNo>

</WebSalesOrder>"""  # noqa: E501

SEED_WEB_SALES_ORDER_CRITERIA = """<WebSalesOrderQueryCriteria

xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO"

xmlns:i="http://www.w3.org/2001/XMLSchema-instance">

<PONumber>081341987533</PONumber>

</WebSalesOrderQueryCriteria>"""

SEED_WEB_SALES_ORDER_RESPONSE = """<WebSalesOrder

xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO"

xmlns:i="http://www.w3.org/2001/XMLSchema-instance">

<Comments/>

<DeliveryDetail>

<AddressDetailID>28701</AddressDetailID>

<AddressLine1>10 Downing Street</AddressLine1>

<AddressLine2>Westminster</AddressLine2>

<AltNumber/>

<City>London</City>

<Company/>

<Country/>

<Email>[email\xa0protected]</Email>

<FullName>John Doe</FullName>

<Mobile/>

<Phone>08358798897</Phone>

<PostCode>0007</PostCode>

<Province>-</Province>

<WarehouseID i:nil="true"/>

</DeliveryDetail>

<DeliveryMethodID>1</DeliveryMethodID>

<EntitlementID>0</EntitlementID>

<IsGift>true</IsGift>

<IsXStock>true</IsXStock>

<LineItems>

<WebSalesOrderDetail>

<CNTypeID>0</CNTypeID>

<Comment/>

<Commission>10.00</Commission>

<Discount>0.00</Discount>

<DueDate>2018-09-01T00:00:00</DueDate>

<ExRate>1.0000</ExRate>

<InvoiceDate i:nil="true"/>

<InvoiceNumber/>

<InvoiceReference/>

<InvoiceSubCustomer>false</InvoiceSubCustomer>

<InvoiceUnits>0.00</InvoiceUnits>

<ProductStockID>0</ProductStockID>

<Reference/>

<SODetailID>136141</SODetailID>

<SalesOrderID>33534</SalesOrderID>

<SellingPrice>16.36</SellingPrice>

<StatusID>11</StatusID>

<ThirdPartyBarcode>999999999999</ThirdPartyBarcode>

<Units>4.00</Units>

</WebSalesOrderDetail>

</LineItems>

<PONumber>081341987533</PONumber>

<PaymentMethodID>3</PaymentMethodID>

<PrintInvoice>true</PrintInvoice>

<RequiredDate>2018-09-01T00:00:00</RequiredDate>

<SalesOrderID>33534</SalesOrderID>

<SpecialInstructions/>

<StatusID>11</StatusID>

<TrackNo>TRACK</TrackNo>

<WebCustomerName>John Doe</WebCustomerName>

<WebSale>true</WebSale>

</WebSalesOrder>"""

SEED_WEB_CREDIT_NOTE = """<WebCreditNote xmlns:i="http://www.w3.org/2001/XMLSchema-instance"

xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO">

<Comments>other</Comments>

<LineItems>

<WebCreditNoteDetail>

<CNTypeID>0</CNTypeID>

<Comment/>

<Discount>0.00</Discount>

<ExRate>1</ExRate>

<Reference/>

<SellingPrice>29.95</SellingPrice>

<ThirdPartyBarcode>123123123123</ThirdPartyBarcode>

<Units>1</Units>

</WebCreditNoteDetail>

<WebCreditNoteDetail>

<CNTypeID>4</CNTypeID>

<Comment/>

<Discount>0</Discount>

<ExRate>1</ExRate>

<Reference/>

<SellingPrice>1.25</SellingPrice>

<ThirdPartyBarcode/>

<Units>1</Units>

</WebCreditNoteDetail>

</LineItems>

<PONumber>ON/21838</PONumber>

<Reference>ST002087231-7899</Reference>

<SalesOrderNumber>SO-00026552</SalesOrderNumber>

<TrackNo>WEBCUSTOMER</TrackNo>

</WebCreditNote>"""

SEED_WEB_CREDIT_NOTE_RESPONSE = """<WebCreditNote xmlns="http://schemas.datacontract.org/2004/07/iSync.EAI.DTO"

xmlns:i="http://www.w3.org/2001/XMLSchema-instance">

<Comments>other</Comments>

<LineItems>

<WebCreditNoteDetail>

<CNTypeID>0</CNTypeID>

<Comment/>

<Discount>0.00</Discount>

<ExRate>1</ExRate>

<Reference/>

<SellingPrice>29.95</SellingPrice>

<ThirdPartyBarcode>123123123123</ThirdPartyBarcode>

<Units>1</Units>

</WebCreditNoteDetail>

<WebCreditNoteDetail>

<CNTypeID>4</CNTypeID>

<Comment/>

<Discount>0</Discount>

<ExRate>1</ExRate>

<Reference/>

<SellingPrice>1.25</SellingPrice>

<ThirdPartyBarcode/>

<Units>1</Units>

</WebCreditNoteDetail>

</LineItems>

<PONumber>ON/21838</PONumber>

<Reference>ST002087231-7899</Reference>

<SalesOrderNumber>SO-00026552</SalesOrderNumber>

<TrackNo>WEBCUSTOMER</TrackNo>

</WebCreditNote>"""
